"Small helpers shared by the robustness tests of `lsuv_fastai.core`"
import random, warnings
import numpy as np, pytest, torch
from torch import nn
import torch.nn.functional as F
from lsuv_fastai.core import layer_stats, scaled_params

STATUSES = {'ok', 'dead', 'not called', 'not converged', 'skipped'}


@pytest.fixture(autouse=True)
def seed_each_test():
    "Imported by each test module: every test starts from the same torch RNG state, whatever ran before"
    torch.manual_seed(0)
    yield


def target_names(model) -> dict:
    "{report name: module}: a module's report name is its first qualified name (the root's is its class name)"
    first = {}
    for n, m in model.named_modules(remove_duplicate=False): first.setdefault(id(m), (n or type(m).__name__, m))
    return dict(first.values())


def run_lsuv(model, xb, **kw):
    "`lsuv_init` with its warnings collected: (report, list of warning messages)"
    from lsuv_fastai.core import lsuv_init
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        rep = lsuv_init(model, xb, **kw)
    return rep, [str(w.message) for w in ws]


def assert_meets_targets(model, xb, rep, *, modules=None, train=True, mean=0., std=1., tol=1e-3, seed=None):
    """Re-measure every target with `layer_stats` (plain hooks, one fresh forward) and check each 'ok' target:
    |std-`std`| <= tol, and |mean-`mean`| <= tol where the target has a bias. `seed`: reseed before the
    re-measurement so that dropout / stochastic depth draw the same masks as the LSUV pass did."""
    assert set(rep.df.status) <= STATUSES, set(rep.df.status)
    if seed is not None: torch.manual_seed(seed)
    stats = layer_stats(model, xb, modules, train)
    names = target_names(model)
    checked = 0
    for r in rep.df.itertuples():
        if r.status != 'ok': continue
        m = names[r.name]
        assert m in stats, f"'{r.name}' is ok in the report but was not called in the re-measurement"
        mu, sd = stats[m]
        assert abs(sd - std) <= tol, f"'{r.name}' ({r.type}): re-measured std {sd:.6f} (report: {r.std_after:.6f})"
        if mean is not None and scaled_params(m)[1] is not None:
            assert abs(mu - mean) <= tol, f"'{r.name}' ({r.type}): re-measured mean {mu:.6f} (report: {r.mean_after:.6f})"
        checked += 1
    return stats, checked


def bits(t: torch.Tensor) -> torch.Tensor:
    "`t` flattened, floats reinterpreted as integers so that equality is bitwise (NaN == NaN, -0. != 0.)"
    t = t.detach().reshape(-1)
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


def state_equal(a: dict, b: dict) -> bool:
    "Two state dicts hold the same keys, dtypes, shapes and bitwise-equal values"
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                      and torch.equal(bits(a[k]), bits(b[k])) for k in a)


def copy_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def snapshot(model) -> dict:
    "Everything about `model` that `lsuv_init` must restore (or leave alone) besides the targets' weights"
    hook_dicts = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks', '_backward_pre_hooks',
                  '_forward_hooks_with_kwargs', '_forward_hooks_always_called', '_forward_pre_hooks_with_kwargs')
    return dict(
        training=[m.training for m in model.modules()],
        hooks=[{d: list(getattr(m, d, {})) for d in hook_dicts} for m in model.modules()],
        buffers={k: v.clone() for k, v in model.named_buffers()},
        param_ids=[id(p) for p in model.parameters()],
        requires_grad=[p.requires_grad for p in model.parameters()],
        grads=[None if p.grad is None else p.grad.clone() for p in model.parameters()],
        grad_ids=[id(p.grad) for p in model.parameters()],
    )


def assert_same_snapshot(before: dict, model):
    after = snapshot(model)
    for k in ('training', 'hooks', 'param_ids', 'requires_grad', 'grad_ids'):
        assert before[k] == after[k], f"{k} changed"
    assert state_equal(before['buffers'], after['buffers']), "buffers changed"
    for g0, g1 in zip(before['grads'], after['grads']):
        assert (g0 is None) == (g1 is None) and (g0 is None or torch.equal(g0, g1)), ".grad changed"


def rng_states():
    "The global RNG states of torch, python `random` and numpy"
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def assert_same_rng(a, b):
    assert torch.equal(a[0], b[0]), "torch RNG state changed"
    assert a[1] == b[1], "python random state changed"
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a[2], b[2])), "numpy RNG changed"


def all_finite(model) -> bool:
    return all(torch.isfinite(t).all() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point())


# A course-style layer (fastai course part 2, lesson 11): conv + shifted leaky ReLU, exposing the conv's
# `weight` and a numeric `bias` (minus the shift) that LSUV adjusts; not affine, so LSUV re-runs it.
class GeneralRelu(nn.Module):
    def __init__(self, leak=0.1, sub=0.4): super().__init__(); self.leak, self.sub = leak, sub
    def forward(self, x): return F.leaky_relu(x, self.leak) - self.sub


class ConvLayer(nn.Module):
    def __init__(self, ni, nf, ks=3, stride=2, sub=0.4):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(ni, nf, ks, padding=ks//2, stride=stride), GeneralRelu(sub=sub)
    def forward(self, x): return self.relu(self.conv(x))
    @property
    def bias(self): return -self.relu.sub
    @bias.setter
    def bias(self, v): self.relu.sub = -v
    @property
    def weight(self): return self.conv.weight


class RaiseOnCall(nn.Module):
    "Identity that raises on its `k`-th call (counting from 1)"
    def __init__(self, k): super().__init__(); self.k, self.calls = k, 0
    def forward(self, x):
        self.calls += 1
        if self.calls == self.k: raise RuntimeError(f"injected failure at call {self.k}")
        return x


class LinLayer(nn.Module):
    "The dense analogue of `ConvLayer`: Linear + shifted leaky ReLU, with `weight` and a numeric `bias` property"
    def __init__(self, ni, nf, sub=0.4):
        super().__init__()
        self.lin, self.relu = nn.Linear(ni, nf), GeneralRelu(sub=sub)
    def forward(self, x): return self.relu(self.lin(x))
    @property
    def bias(self): return -self.relu.sub
    @bias.setter
    def bias(self, v): self.relu.sub = -v
    @property
    def weight(self): return self.lin.weight


class RerunTarget(nn.Module):
    "A custom (non-affine) target around a Linear or Conv: LSUV re-runs it, so inner modules see several calls"
    def __init__(self, inner, pre=None):
        super().__init__()
        self.inner, self.pre = inner, (pre if pre is not None else nn.Identity())
    def forward(self, x): return torch.tanh(self.inner(self.pre(x))) * 2
    @property
    def weight(self): return self.inner.weight
    @property
    def bias(self): return self.inner.bias


def numeric_attrs(model) -> list:
    "(module name, attribute, value) of every float/int attribute of every module: hyper-parameters and shifts"
    skip = {'training', 'calls'}
    return [(n, k, v) for n, m in model.named_modules() for k, v in sorted(vars(m).items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip]
