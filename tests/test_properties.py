"""Property tests (hypothesis): random stacks of Linear/Conv/activation/norm/dropout/residual/custom blocks,
random batch sizes, dtypes (float32, float64, bfloat16) and targets.

After `lsuv_init`, every 'ok' target meets the targets when re-measured, and every other status is explained
by the report; nothing becomes NaN/inf; hooks, training flags, buffers, RNG states, Parameter identities,
requires_grad and .grad are as before. A failure injected anywhere in the forward leaves the model exactly as it was.

bfloat16: weights have 8 significant bits, so a correction by a factor within ~0.2% of 1 rounds back to the same
weights. bf16 targets are never solved in closed form (`is_affine` is False), they are re-run, and may end as
'not converged', with std within a few % of the target. 'ok' still means the re-measurement is within tol.
"""
import random
import torch
from torch import nn
from hypothesis import given, settings, example, strategies as st, HealthCheck
from lsuv_fastai.core import lsuv_init, lsuv_layers, scaled_params, is_affine
from lsuv_fastai.test_utils import (run_lsuv, assert_meets_targets, snapshot, assert_same_snapshot, rng_states, assert_same_rng,
                                     all_finite, copy_state, state_equal, ConvLayer, LinLayer, RerunTarget, RaiseOnCall, numeric_attrs)

SETTINGS = dict(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=True,  # same examples every run
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
BF16_TOL = 5e-2   # how close (relative) a bf16 'not converged' Linear/Conv still gets: tiny layers (fan-in 4, a dozen
                  # outputs) wander by a few % since every correction of their weights is rounded to 8 bits


class Residual(nn.Module):
    def __init__(self, f): super().__init__(); self.f = f
    def forward(self, x): return x + self.f(x)


ACTS = [nn.ReLU, nn.Tanh, nn.GELU, lambda: nn.LeakyReLU(0.1), nn.SiLU]


def make_block(kind, conv, w, rnd: random.Random):
    "One block of width `w`; `rnd` picks its details so that the whole stack follows from one seed"
    def affine(bias=None):
        bias = rnd.random() < 0.7 if bias is None else bias
        m = nn.Conv2d(w, w, 3, padding=1, bias=bias) if conv else nn.Linear(w, w, bias=bias)
        with torch.no_grad():   # a badly scaled (and shifted) init, so that LSUV has something to do
            m.weight.mul_(10 ** rnd.uniform(-1.5, 1.5))
            if bias: m.bias.add_(rnd.uniform(-2, 2))
        return m
    if kind == 'affine': return affine()
    if kind == 'act': return rnd.choice(ACTS)()
    if kind == 'norm':
        if conv: return rnd.choice([lambda: nn.BatchNorm2d(w), lambda: nn.GroupNorm(2, w)])()
        return rnd.choice([lambda: nn.BatchNorm1d(w), lambda: nn.LayerNorm(w)])()
    if kind == 'dropout': return nn.Dropout2d(0.2) if conv and rnd.random() < 0.5 else nn.Dropout(rnd.choice([0.1, 0.5]))
    if kind == 'residual': return Residual(nn.Sequential(affine(), rnd.choice(ACTS)(), affine()))
    if kind == 'custom':   # a target LSUV must re-run: course-style layer with a numeric bias, or a tanh wrapper
        if rnd.random() < 0.5: return ConvLayer(w, w, stride=1, sub=rnd.uniform(0, 1)) if conv else LinLayer(w, w, sub=rnd.uniform(0, 1))
        return RerunTarget(affine())
    raise ValueError(kind)


def targets_of(model):
    "Default targets, minus those inside custom targets, plus the custom targets (which expose `weight`)"
    custom = [m for m in model.modules() if isinstance(m, (ConvLayer, LinLayer, RerunTarget))]
    inner = {id(s) for c in custom for s in c.modules() if s is not c}
    return [m for m in lsuv_layers(model) if id(m) not in inner] + custom


@st.composite
def specs(draw):
    "A model + batch + lsuv_init arguments, as plain data (so that failures can be pinned with @example)"
    return dict(conv=draw(st.booleans()), dtype=draw(st.sampled_from(['float32', 'float64', 'bfloat16'])),
                bs=draw(st.integers(2, 8)), w=draw(st.sampled_from([4, 8, 16])),
                kinds=draw(st.lists(st.sampled_from(['affine', 'act', 'norm', 'dropout', 'residual', 'custom']), min_size=1, max_size=7)),
                seed=draw(st.integers(0, 2**16)),
                train=draw(st.booleans()), mean=draw(st.sampled_from([0., None, 0.5])), std=draw(st.sampled_from([1., 0.5, 2.])),
                max_iters=draw(st.sampled_from([10, 3])), ortho=draw(st.booleans()))


def build(spec):
    "(model, batch, dtype, kwargs of lsuv_init) from a spec: every detail follows from spec['seed']"
    conv, w, dtype = spec['conv'], spec['w'], getattr(torch, spec['dtype'])
    rnd = random.Random(spec['seed']); torch.manual_seed(spec['seed'])
    stem = nn.Conv2d(3, w, 3, padding=1) if conv else nn.Linear(5, w)
    model = nn.Sequential(stem, *[make_block(k, conv, w, rnd) for k in spec['kinds']])
    if conv: model.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 3)))
    model = model.to(dtype)
    bs = spec['bs']
    x = (torch.randn(bs, 3, 6, 6) if conv else torch.randn(bs, 5)) * 10 ** rnd.uniform(-1, 1) + rnd.uniform(-1, 1)
    kw = {k: spec[k] for k in ('train', 'mean', 'std', 'max_iters', 'ortho')}
    # ortho draws its matrices from the RNG before the forward, so a reseeded re-measurement would draw other
    # dropout masks than the LSUV pass did: measure in eval mode then (see test_model_zoo.py)
    if spec['ortho'] and 'dropout' in spec['kinds']: kw['train'] = False
    return model, x.to(dtype), dtype, kw


# Cases hypothesis found against the first version of core.py (pinned, as the search may not meet them again):
# a tanh target driven into saturation by its bias correction: constant output, then ZeroDivisionError
SATURATING = dict(conv=False, dtype='float32', bs=2, w=4, kinds=['custom'], seed=2,
                  train=False, mean=0., std=1., max_iters=10, ortho=False)


def with_grads(model, xb):
    "Give some parameters a .grad and freeze one, so that the test can check LSUV leaves both alone"
    model(xb).float().sum().backward()
    ps = list(model.parameters())
    ps[0].requires_grad_(False)
    ps[-1].grad = None


@settings(**SETTINGS)
@given(specs())
@example(SATURATING)
def test_random_stacks_meet_targets_or_explain_why(spec):
    model, xb, dtype, kw = build(spec)
    with_grads(model, xb)
    model.eval(); model[0].train()            # mixed training flags
    model[-1].register_forward_hook(lambda *a: None)
    mods = targets_of(model)
    w0 = {id(m): scaled_params(m)[0].detach().clone() for m in mods}
    torch.manual_seed(1)    # replayed before the re-measurement: same dropout masks
    before, rng0 = snapshot(model), rng_states()
    rep, ws = run_lsuv(model, xb, modules=targets_of, **kw)

    assert_same_snapshot(before, model)
    assert_same_rng(rng0, rng_states())
    assert all_finite(model)
    assert len(rep.df) == len(mods)
    assert set(rep.df.status) <= {'ok', 'dead', 'not converged'}, rep   # every target runs; none is skipped
    tol, mean, std = 1e-3, kw['mean'], kw['std']
    # 'ok': the independent re-measurement agrees (same seed: same dropout masks; see test_model_zoo.py)
    stats, _ = assert_meets_targets(model, xb, rep, modules=targets_of, train=kw['train'], mean=mean, std=std, seed=1)
    names = {n: m for n, m in model.named_modules()}
    for r in rep.df.itertuples():
        m = names[r.name]
        if r.status == 'dead':            # no variance before: left as it was
            assert r.std_before <= max(1e-6 * abs(r.mean_before), 1e-10), r
            if not kw['ortho']: assert torch.equal(scaled_params(m)[0], w0[id(m)]), r
        elif r.status == 'not converged':  # the report says why: still out of tolerance when it stopped
            has_bias = scaled_params(m)[1] is not None and mean is not None
            assert r.iters <= kw['max_iters'], r
            assert abs(r.std_after - std) > tol or (has_bias and abs(r.mean_after - mean) > tol), r
            assert any('did not reach the target' in w for w in ws)
            # closed-form targets (plain float32/64 Linear/Conv, with `mean` set or without bias) always converge;
            # re-run ones (custom layers, bf16 weights, a bias left alone by mean=None) may not: a custom layer need not
            # be anywhere near affine in its weight and bias, and a bias's spread over channels does not scale
            assert not (is_affine(m) and (mean is not None or scaled_params(m)[1] is None)), f"closed-form target did not converge: {r}"
            if dtype == torch.bfloat16 and kw['max_iters'] == 10 and type(m) in (nn.Linear, nn.Conv2d):
                assert abs(r.std_after - std) <= BF16_TOL * std, r
        # the report's 'after' is what the model now computes (re-measurement at the first call)
        if r.status in ('ok', 'not converged') and m in stats:
            assert abs(stats[m][1] - r.std_after) <= 1e-3 * std, (r, stats[m])


@settings(**SETTINGS)
@given(specs(), st.integers(0, 8), st.integers(1, 3), st.booleans())
def test_failure_injected_in_forward_leaves_model_untouched(spec, where, k, in_rerun_target):
    """A module raising on its k-th call: at a random place of the stack (k=1), or inside a re-run target,
    where the k-th call happens during LSUV's re-runs, after weights were changed"""
    model, xb, dtype, kw = build(spec)
    if in_rerun_target:
        conv = isinstance(model[0], nn.Conv2d)
        w = model[0].out_channels if conv else model[0].out_features
        inner = RerunTarget(nn.Conv2d(w, w, 1) if conv else nn.Linear(w, w), pre=RaiseOnCall(k)).to(dtype)
        model.insert(1 + where % (len(model) - conv), inner)   # conv stacks: before the pooling head
        boom = inner.pre
    else:
        boom = RaiseOnCall(1)
        model.insert(where % (len(model) + 1), boom)
    model.train()
    sd0, attrs0, snap0, rng0 = copy_state(model), numeric_attrs(model), snapshot(model), rng_states()
    try:
        lsuv_init(model, xb, modules=targets_of, **kw)
    except RuntimeError as e:
        assert 'injected failure' in str(e)
    else:   # the raiser was not called k times (the re-run target converged earlier)
        assert in_rerun_target and boom.calls < k
        return
    assert state_equal(copy_state(model), sd0), "state_dict changed after a failed lsuv_init"
    assert numeric_attrs(model) == attrs0, "numeric attributes (e.g. a layer's numeric bias) changed"
    assert_same_snapshot(snap0, model)
    assert_same_rng(rng0, rng_states())
