"""Hostile inputs and arguments: each gets a clear error (or warning) naming what is wrong, and the model is
left exactly as it was (state_dict bitwise equal)."""
import numpy as np, pytest, torch
from torch import nn
from lsuv_fastai.core import lsuv_init, layer_stats
from lsuv_fastai.test_utils import run_lsuv, copy_state, state_equal, snapshot, assert_same_snapshot, rng_states, assert_same_rng


def mlp(): return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 3))


def cnn(): return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))


class EmbedNet(nn.Module):
    def __init__(self): super().__init__(); self.emb, self.lin = nn.Embedding(10, 6), nn.Linear(6, 4)
    def forward(self, x): return self.lin(self.emb(x)).mean(1)


def assert_refused(model, xb, exc, match, **kw):
    "lsuv_init raises `exc` whose message matches `match`, and leaves `model` untouched"
    sd, snap, rng = copy_state(model), snapshot(model), rng_states()
    with pytest.raises(exc, match=match):
        lsuv_init(model, xb, **kw)
    assert state_equal(copy_state(model), sd)
    assert_same_snapshot(snap, model)
    assert_same_rng(rng, rng_states())


# ---------------------------------------------------------------- the batch
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_batch(bad):
    x = torch.randn(8, 4); x[3, 1] = bad
    assert_refused(mlp(), x, ValueError, 'NaN or inf')


def test_non_finite_in_one_of_several_inputs():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        def forward(self, x, y): return self.a(x) + self.b(y)
    y = torch.randn(8, 4); y[0, 0] = float('nan')
    assert_refused(Two(), (torch.randn(8, 4), y), ValueError, 'NaN or inf')


@pytest.mark.parametrize('value', [0., 3.5])
def test_constant_batch(value):
    assert_refused(mlp(), torch.full((8, 4), value), ValueError, 'constant')
    assert_refused(cnn(), torch.full((2, 3, 8, 8), value), ValueError, 'constant')


@pytest.mark.parametrize('shape', [(0, 4), (0,)])
def test_empty_batch(shape):
    assert_refused(mlp(), torch.zeros(shape), ValueError, 'empty')


def test_batch_of_one_sample_warns_and_works():
    m = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16))
    rep, ws = run_lsuv(m, torch.randn(1, 4))
    assert any('one sample' in w for w in ws), ws
    assert set(rep.df.status) == {'ok'}


def test_batch_of_one_sample_with_batchnorm_fails_cleanly():
    "BatchNorm1d cannot train on one sample: PyTorch's error comes through, after LSUV's warning"
    m = mlp()
    with pytest.warns(UserWarning, match='one sample'):
        assert_refused(m, torch.randn(1, 4), ValueError, 'more than 1 value per channel')


def test_integer_input_to_embedding_model():
    m = EmbedNet()
    x = torch.randint(0, 10, (8, 5))
    rep, _ = run_lsuv(m, x)
    assert rep.df.status.tolist() == ['ok']
    mu, sd = layer_stats(m, x)[m.lin]
    assert abs(sd - 1) <= 1e-3 and abs(mu) <= 1e-3


def test_integer_input_to_float_model():
    "torch's own error reaches the user (it names the dtypes), and the model is untouched"
    assert_refused(mlp(), torch.randint(0, 5, (8, 4)), RuntimeError, 'must have the same dtype, but got Long and Float')


def test_constant_integer_batch_to_embedding_model():
    """Every sample is the same token: the batch has no variation, like an all-zero float batch.
    (Today only float inputs are checked for being constant, and LSUV 'normalizes' the spread of one embedding.)"""
    assert_refused(EmbedNet(), torch.zeros(8, 5, dtype=torch.long), ValueError, 'constant')


def test_constant_float_input_beside_varying_categorical_input_is_fine():
    """TabularModel-style input (x_cat, x_cont) with an all-zero continuous part: the categorical part still
    varies, so the batch is usable and must not be refused as 'constant'."""
    from fastai.tabular.all import TabularModel
    m = TabularModel([(5, 3), (8, 4)], n_cont=2, out_sz=2, layers=[16, 8])
    x_cat = torch.stack([torch.randint(0, 5, (16,)), torch.randint(0, 8, (16,))], 1)
    rep, _ = run_lsuv(m, (x_cat, torch.zeros(16, 2)))
    assert set(rep.df.status) == {'ok'}


def test_non_tensor_batch():
    assert_refused(mlp(), [1, 2, 3], TypeError, 'tensor')
    assert_refused(mlp(), (), TypeError, 'tensor')


# ---------------------------------------------------------------- the model / modules
def test_model_without_targets():
    assert_refused(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4)), torch.randn(8, 4), ValueError, 'No layer to initialize')


def test_modules_not_in_the_model():
    m, other = mlp(), nn.Conv2d(1, 1, 1)
    assert_refused(m, torch.randn(8, 4), ValueError, 'Linear that is not part of the model', modules=[m[0], nn.Linear(8, 3)])
    assert_refused(m, torch.randn(8, 4), ValueError, 'Conv2d that is not part of the model', modules=lambda o: [other])


def test_modules_of_wrong_type():
    m = mlp()
    assert_refused(m, torch.randn(8, 4), TypeError, 'nn.Module', modules=['0'])
    assert_refused(m, torch.randn(8, 4), ValueError, 'No layer', modules=[])


def test_modules_callable_returning_none():
    "A `modules` function that forgets to return: the error should say that `modules` gave nothing usable"
    assert_refused(mlp(), torch.randn(8, 4), TypeError, '`modules`', modules=lambda m: None)


def test_non_finite_weights_name_the_layer():
    m = mlp()
    with torch.no_grad(): m[3].weight[0, 0] = float('nan')
    assert_refused(m, torch.randn(8, 4), ValueError, "non-finite activations at layer '3'")


def test_constant_layer_output_is_dead_not_a_crash():
    """A layer with zero weights and a constant bias outputs a constant. Its measured std must not be float32
    rounding noise (that made LSUV divide by a zero std on the next correction: ZeroDivisionError)."""
    for c in (3.3, 1000.3, -0.01):
        m = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 8))
        with torch.no_grad(): m[0].weight.zero_(); m[0].bias.fill_(c)
        w0 = copy_state(m)
        rep, ws = run_lsuv(m, torch.randn(16, 4))
        assert rep.df.status[0] == 'dead', rep
        assert any('no variance' in w for w in ws)
        assert torch.equal(m[0].weight, w0['0.weight']) and torch.equal(m[0].bias, w0['0.bias'])
        assert all(torch.isfinite(p).all() for p in m.parameters())


# ---------------------------------------------------------------- the arguments
@pytest.mark.parametrize('kw,match', [
    (dict(std=0.), '`std`'), (dict(std=-1.), '`std`'), (dict(std=float('nan')), '`std`'), (dict(std=float('inf')), '`std`'),
    (dict(std='1'), '`std`'),
    (dict(tol=0.), '`tol`'), (dict(tol=-1e-3), '`tol`'), (dict(tol=float('nan')), '`tol`'), (dict(tol=float('inf')), '`tol`'),
    (dict(max_iters=0), '`max_iters`'), (dict(max_iters=-2), '`max_iters`'), (dict(max_iters=2.5), '`max_iters`'),
    (dict(mean=float('nan')), '`mean`'), (dict(mean=float('inf')), '`mean`'), (dict(mean='0'), '`mean`'),
])
def test_bad_arguments(kw, match):
    assert_refused(mlp(), torch.randn(8, 4), ValueError, match, **kw)


def test_numpy_scalars_are_numbers():
    "Hyper-parameters often come from numpy (configs, sweeps): np.float32(1.) is a valid `std`"
    rep, _ = run_lsuv(mlp(), torch.randn(8, 4), std=np.float32(1.), tol=np.float64(1e-3), max_iters=np.int64(5), mean=np.float32(0.))
    assert set(rep.df.status) == {'ok'}
