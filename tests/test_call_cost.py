"""What keeps a call of `lsuv_init` cheap on a model of many small layers, and the guarantees it must keep meanwhile.

On such a model (the README's 30 x Linear(64, 64)) the cost of a call is not arithmetic but the number of Python and
torch calls around it (`bench/speed.py`). The tests below pin the choices that cut it, so that they cannot regress
silently: one traversal of the model of our own (no torch traversal, even where FSDP2 and DTensor are imported, as
they are in a fastai process), each target's `forward` wrapped for the pass instead of hooked (and restored), training
flags set directly where that is the same as `model.train`, python's and numpy's RNGs kept where user code runs."""
import random, warnings
import numpy as np
import pytest, torch
from torch import nn
import torch.distributed.tensor, torch.distributed.fsdp   # (imported: the checks for sharded models must stay cheap)
from lsuv_fastai.core import lsuv_init
from lsuv_fastai.report import layer_stats
from lsuv_fastai.utils import preserved, runs_user_code


def mlp(depth=4, width=16):
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)], nn.Linear(width, 3))


TRAVERSALS = ('modules', 'named_modules', 'children', 'named_children', 'parameters', 'named_parameters', 'buffers',
              'named_buffers')

def test_one_traversal_of_our_own(monkeypatch):
    "No torch traversal of the model (each one walks every module again), with FSDP2 and DTensor imported"
    calls = []
    for name in TRAVERSALS:
        orig = getattr(nn.Module, name)
        monkeypatch.setattr(nn.Module, name, lambda self, *a, _o=orig, _n=name, **k: (calls.append(_n), _o(self, *a, **k))[1])
    m = mlp()
    rep = lsuv_init(m, torch.randn(64, 16))
    assert calls == []
    assert set(rep.df.status) == {'ok'}


class OwnForward(nn.Linear):
    "A layer whose instance carries a `forward` of its own (as `accelerate` sets one)"
    def __init__(self, *a):
        super().__init__(*a)
        self.forward = self.scaled

    def scaled(self, x): return 2*nn.Linear.forward(self, x)


def test_forward_wrapped_for_the_pass_and_restored():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), OwnForward(8, 8))
    own = m[2].forward
    rep = lsuv_init(m, torch.randn(32, 8))
    assert 'forward' not in vars(m[0])   # torch's own forward, from the class, as before
    assert m[2].forward is own           # the user's own, as before
    assert rep.df.status.tolist() == ['ok', 'ok']
    res = layer_stats(m, torch.randn(32, 8))   # (plain hooks see both layers)
    assert set(res) == {m[0], m[2]}


def test_forward_restored_after_a_failure():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    m[2].weight.data[0, 0] = float('inf')
    with pytest.raises(ValueError, match="non-finite activations at layer '2'"): lsuv_init(m, torch.randn(32, 8))
    assert all('forward' not in vars(l) for l in m)


def test_global_forward_hook_that_changes_the_output_is_named():
    "LSUV normalizes each layer's own output: a global forward hook that changes it is applied after, and named"
    m = mlp(2)
    def double(mod, i, o):
        if isinstance(mod, nn.Linear): o.mul_(2)
    h = nn.modules.module.register_module_forward_hook(double)
    try:
        with pytest.warns(UserWarning, match=r"forward hooks of yours change the output of '0\.0', '1\.0', '2'"):
            rep = lsuv_init(m, torch.randn(64, 16))
    finally: h.remove()
    assert set(rep.df.status) == {'ok'}
    assert not nn.modules.module._global_forward_hooks


class OwnTrain(nn.Module):
    "A module whose `train` does more than set flags: `preserved(mode=...)` must call it"
    def __init__(self):
        super().__init__()
        self.lin,self.calls = nn.Linear(4, 4),[]
    def train(self, mode=True):
        self.calls.append(mode); return super().train(mode)
    def forward(self, x): return self.lin(x)


class LoudSetattr(nn.Linear):
    "A module whose `__setattr__` is its own: its training flag must go through it"
    def __setattr__(self, k, v):
        if k == 'training': self.__dict__.setdefault('seen', []).append(v)
        super().__setattr__(k, v)


@pytest.mark.parametrize('mode', [True, False])
def test_preserved_sets_the_mode_and_puts_it_back(mode):
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(4)))
    m.train(not mode); m[1].train(mode)   # mixed flags, put back each as it was
    before = [x.training for x in m.modules()]
    with preserved(m, mode=mode): assert all(x.training is mode for x in m.modules())
    assert [x.training for x in m.modules()] == before


def test_preserved_mode_calls_a_train_of_the_users():
    m = nn.Sequential(OwnTrain(), nn.ReLU()).eval()
    m[0].calls.clear()
    with preserved(m, mode=True): assert [x.training for x in m.modules()] == [True]*4
    assert m[0].calls == [True]   # called to enter train mode; the flags are put back as they were, one by one
    assert not any(x.training for x in m.modules())


def test_preserved_mode_through_a_setattr_of_the_users():
    m = nn.Sequential(LoudSetattr(4, 4)).eval()
    m[0].seen = []
    with preserved(m, mode=True): assert m[0].training
    assert m[0].seen == [True]   # (a custom module's attributes are put back as they were, the flag with them)
    assert not m[0].training


class DrawsPython(nn.Module):
    "A custom module that draws from python's and numpy's RNGs in its forward"
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
    def forward(self, x): return self.lin(x) * (1 + 0*random.random() + 0*np.random.rand())


def test_python_and_numpy_rngs_kept_where_user_code_runs():
    m = nn.Sequential(DrawsPython(), nn.ReLU(), nn.Linear(8, 2))
    assert runs_user_code(list(m.modules()))
    assert not runs_user_code(list(nn.Sequential(nn.Linear(2, 2)).modules()))
    random.seed(3); np.random.seed(3)
    lsuv_init(m, torch.randn(16, 8))
    assert random.random() == random.Random(3).random()
    assert np.random.rand() == np.random.RandomState(3).rand()


def test_user_hook_makes_user_code():
    m = nn.Sequential(nn.Linear(2, 2))
    h = m[0].register_forward_pre_hook(lambda *a: None)
    assert runs_user_code(list(m.modules()))
    h.remove()
    g = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try: assert runs_user_code(list(m.modules()))
    finally: g.remove()
