"""Never a silent change: lazy and weight-normed layers, weights read out of turn, forward hooks of the user's, row
order, the callback's small lies, and the demo's pairing. Each test names what it guards; every 'ok' row is checked
against an independent re-measurement (`assert_meets_targets`, float64 hooks on each layer's own output)."""
import io, random, warnings
from contextlib import redirect_stdout
import numpy as np
import pytest, torch
from torch import nn
import torch.nn.functional as F
from lsuv_fastai.core import lsuv_init, layer_stats
from lsuv_fastai.callback import LSUVCallback
from lsuv_fastai.test_utils import run_lsuv, assert_meets_targets, copy_state, state_equal, synth_learner, synth_dls

warnings.filterwarnings('ignore', message='.*torch.nn.utils.weight_norm.* is deprecated')
warnings.filterwarnings('ignore', message='Lazy modules are a new feature')


def quiet(f, *a, **kw):
    with redirect_stdout(io.StringIO()) as out: res = f(*a, **kw)
    return res, out.getvalue()


# ---------------------------------------------------------------- lazy modules
def lazy_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.LazyConv2d(8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


def test_lazy_layers_are_initialized():
    m, x = lazy_net(), torch.randn(16, 3, 10, 10)
    rep, _ = run_lsuv(m, x)
    assert rep.df.status.tolist() == ['ok'] * 3
    assert_meets_targets(m, x, rep)


def test_lazy_layers_draw_from_the_global_rng_as_a_first_forward_would():
    "The lazy layers' random init stays drawn: the next draws are those after a plain first call, not repeated"
    x = torch.randn(16, 3, 10, 10)
    a = lazy_net(); lsuv_init(a, x); after_lsuv = torch.rand(4)
    b = lazy_net()
    with torch.no_grad(): b.eval()(x)
    after_forward = torch.rand(4)
    assert torch.equal(after_lsuv, after_forward)


def test_learner_with_lazy_layers():
    "A Learner around a model with lazy layers builds, and the callback initializes them at fit"
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(2))
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    learn = Learner(synth_dls(), model, loss_func=CrossEntropyLossFlat(), cbs=LSUVCallback())
    with learn.no_logging(): quiet(learn.fit, 1, 1e-3)
    assert learn.lsuv.report.df.status.tolist() == ['ok'] * 3


# ---------------------------------------------------------------- weight norm, spectral norm
@pytest.mark.parametrize('style', ['parametrizations', 'old'])
def test_weight_normed_layers_are_initialized_through_g(style):
    wn = nn.utils.parametrizations.weight_norm if style == 'parametrizations' else nn.utils.weight_norm
    torch.manual_seed(0)
    m = nn.Sequential(wn(nn.Linear(16, 32)), nn.ReLU(), wn(nn.Linear(32, 32)), nn.ReLU(), wn(nn.Linear(32, 4)))
    x = torch.randn(64, 16)
    v0 = [copy_state(l) for l in m[::2]]
    rep, _ = run_lsuv(m, x)
    assert rep.df.status.tolist() == ['ok'] * 3
    assert_meets_targets(m, x, rep)
    for l, sd in zip(m[::2], v0):   # the direction v is as it was; g and the bias moved
        vkey = 'parametrizations.weight.original1' if style == 'parametrizations' else 'weight_v'
        assert torch.equal(l.state_dict()[vkey], sd[vkey])


def test_fastai_weight_normed_conv_layer():
    from fastai.layers import ConvLayer, NormType
    torch.manual_seed(0)
    m = nn.Sequential(*[ConvLayer(3 if i == 0 else 16, 16, norm_type=NormType.Weight) for i in range(6)], nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(16, 10))
    x = torch.randn(16, 3, 16, 16)
    rep, _ = run_lsuv(m, x)
    assert rep.df.status.tolist() == ['ok'] * 7
    assert_meets_targets(m, x, rep)


def test_spectral_norm_is_skipped_with_its_reason():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.utils.spectral_norm(nn.Linear(16, 16)), nn.ReLU(), nn.Linear(16, 2))
    rep, ws = run_lsuv(m, torch.randn(32, 8))
    assert rep.df.status.tolist() == ['ok', 'skipped', 'ok']
    assert any('spectral norm divides its weight by the largest singular value' in w for w in ws), ws


def test_fastai_self_attention_is_not_called_frozen():
    "fastai's SelfAttention: trainable spectral-normed convs; the callback must not say 'frozen'"
    from fastai.layers import SelfAttention
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    class Net(nn.Module):
        def __init__(self):
            super().__init__(); self.lin, self.att, self.out = nn.Linear(20, 32), SelfAttention(32), nn.Linear(32, 2)
        def forward(self, x): return self.out(self.att(self.lin(x)[..., None])[..., 0])
    torch.manual_seed(0)
    learn = Learner(synth_dls(), Net(), loss_func=CrossEntropyLossFlat(), cbs=LSUVCallback())
    (_, out) = quiet(learn.lsuv_init)
    assert 'frozen' not in out, out
    assert learn.lsuv.report.df.status.tolist().count('skipped') == 3


# ---------------------------------------------------------------- weights read out of turn
class Branchy(nn.Module):
    "A branch reads `fc.weight` directly, before (`when='before'`) or after `fc` runs"
    def __init__(self, when):
        super().__init__(); self.when = when
        self.inp, self.fc, self.side, self.out = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4)
    def forward(self, x):
        h = torch.relu(self.inp(x))
        if self.when == 'before': b = F.linear(h, self.fc.weight); y = self.fc(h)
        else: y = self.fc(h); b = F.linear(h, self.fc.weight)
        return self.out(torch.relu(self.side(torch.relu(b))) + torch.relu(y))


@pytest.mark.parametrize('when', ['before', 'after'])
def test_weight_read_out_of_turn_gives_no_false_ok(when):
    torch.manual_seed(0)
    m, x = Branchy(when), torch.randn(64, 16)
    rep, ws = run_lsuv(m, x)
    assert_meets_targets(m, x, rep)
    if when == 'before':
        assert rep.df.set_index('name').status['fc'] == 'skipped'
        assert any("'fc' (Linear): its weight was used outside it before it ran" in w for w in ws), ws
    else: assert set(rep.df.status) == {'ok'}


# ---------------------------------------------------------------- forward hooks of the user's
def test_a_user_hook_that_changes_the_output_is_said_and_the_report_holds():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    m[2].register_forward_hook(lambda mod, i, o: o * 2)
    x = torch.randn(64, 16)
    rep, ws = run_lsuv(m, x)
    assert set(rep.df.status) == {'ok'}
    assert_meets_targets(m, x, rep)   # each layer's own output; the last layer was fitted to what the hook gave it
    assert any("forward hooks of yours change the output of '2'" in w for w in ws), ws
    st = layer_stats(m, x)
    assert abs(st[m[2]][1] - 1) <= 1e-3


def test_a_user_hook_that_changes_the_output_in_place_is_said():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    m[0].register_forward_hook(lambda mod, i, o: o.mul_(3))
    rep, ws = run_lsuv(m, torch.randn(64, 16))
    assert any("forward hooks of yours change the output of '0'" in w for w in ws), ws


def test_a_user_hook_that_only_looks_is_not_reported():
    seen = []
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    m[0].register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    rep, ws = run_lsuv(m, torch.randn(64, 16))
    assert not [w for w in ws if 'forward hooks' in w], ws
    assert seen == [(64, 32)]


# ---------------------------------------------------------------- row order
def test_rows_are_in_execution_order_skipped_ones_included():
    class Rev(nn.Module):
        def __init__(self):
            super().__init__(); self.b, self.relu, self.a = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)
        def forward(self, x): return self.b(self.relu(self.a(x)))
    m = Rev()
    rep, _ = run_lsuv(m, torch.randn(32, 8), modules=[m.b, m.relu, m.a])
    assert rep.df.name.tolist() == ['a', 'relu', 'b']
    assert rep.df.status.tolist() == ['ok', 'skipped', 'ok']


# ---------------------------------------------------------------- the callback's small lies
def test_n_batches_beyond_the_training_set_is_said():
    learn = synth_learner(LSUVCallback(n_batches=50))
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        quiet(learn.lsuv_init)
    assert any('n_batches=50 asked for 3200 samples; the training set gave 384' in str(w.message) for w in ws)


def test_verbose_prints_the_summary_once_and_no_logging_silences_it():
    learn = synth_learner(LSUVCallback(verbose=True))
    _, out = quiet(learn.lsuv_init)
    assert out.count('LSUV: 13 layers') == 1
    learn = synth_learner(LSUVCallback())
    with learn.no_logging(): _, out = quiet(learn.lsuv_init)
    assert out == ''


# ---------------------------------------------------------------- the demo's pairing
def test_generating_mnist1d_leaves_the_global_rngs_alone():
    "mnist1d seeds numpy and random: the demo's first run in a fresh process would get another batch order"
    from lsuv_fastai.demo import mnist1d_data
    mnist1d_data.cache_clear()
    random.seed(1); np.random.seed(1); torch.manual_seed(1)
    mnist1d_data()
    got = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(1); np.random.seed(1); torch.manual_seed(1)
    assert got == (random.random(), np.random.rand(), torch.rand(1).item())


# ---------------------------------------------------------------- weights loaded before the Learner
@pytest.mark.slow
def test_weights_loaded_before_the_learner_that_look_pretrained_are_left_alone():
    "A well-trained checkpoint loaded into the model before the Learner exists: its layers that look pretrained stay"
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from lsuv_fastai.test_utils import deep_mlp
    from lsuv_fastai.callback import spectral_ratio, PRETRAINED_RATIO
    learn = synth_learner(n=2048)
    with learn.no_logging(): quiet(learn.fit, 30, 1e-2)
    ckpt = copy_state(learn.model)
    model = deep_mlp(seed=1); model.load_state_dict(ckpt)
    looks = [spectral_ratio(l[0].weight if isinstance(l, nn.Sequential) else l.weight) >= PRETRAINED_RATIO for l in model]
    assert sum(looks) >= 10, looks   # most of it: training grew their top singular values
    learn = Learner(synth_dls(n=2048), model, loss_func=CrossEntropyLossFlat(), cbs=LSUVCallback())
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        _, out = quiet(learn.fit, 1, 0.)
    assert f'{sum(looks)} looking pretrained' in out, out
    assert any('look pretrained and are left alone' in str(w.message) for w in ws)
    for i, (l, kept) in enumerate(zip(model, looks)):
        w = l[0].weight if isinstance(l, nn.Sequential) else l.weight
        key = f'{i}.0.weight' if isinstance(l, nn.Sequential) else f'{i}.weight'
        assert torch.equal(w.detach(), ckpt[key]) == kept, (i, kept)


def test_fresh_models_do_not_look_pretrained():
    "No false positive: every target layer of freshly built models is below the threshold (bench/pretrained.py: 24 models)"
    import torchvision.models as tvm
    from fastai.vision.models.xresnet import xresnet18
    from lsuv_fastai.targets import lsuv_layers, scaled_params
    from lsuv_fastai.callback import spectral_ratio, PRETRAINED_RATIO
    torch.manual_seed(0)
    from fastai.vision.learner import create_unet_model
    for model in (tvm.resnet18(), tvm.mobilenet_v3_small(), tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128), xresnet18(),
                  nn.Transformer(64, 4, 2, 2, 128), create_unet_model(tvm.resnet18, 2, (64, 64), pretrained=False)):
        worst = max(spectral_ratio(scaled_params(l)[0]) for l in lsuv_layers(model))
        assert worst < PRETRAINED_RATIO - 0.1, (type(model).__name__, worst)
