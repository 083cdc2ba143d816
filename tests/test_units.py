"""The pure functions under the pass: statistics, corrections, the goal, target selection, batches, and the pass's
decisions on tiny models. Fast (a second or two), so that mutation testing can run them for every mutant:

    mutmut run     # the config is [tool.mutmut] in pyproject.toml; results: mutmut results / mutmut show NAME

Floats: values that are exact in binary (powers of two, small integers) are compared exactly; measured statistics
within float32 accumulation error (relative 1e-6) of a float64 reference."""
import math
import pytest, torch
from torch import nn
from lsuv_fastai.utils import Local
from lsuv_fastai.targets import (LSUV_TYPES, SPECTRAL, lsuv_layers, select, scaled_params, is_affine, skip_reason, main_tensor, Settings,
                                 Status, Target, one_batch, batch_problem, n_samples, tensors)
from lsuv_fastai.stats import (dead, correction, derived, trusted, affine_, moments, mean_std, HostStats, DeviceStats,
                               forced_path, statistics_for)
from lsuv_fastai.report import Fit, row, LSUVReport
from lsuv_fastai.core import lsuv_init
from lsuv_fastai.stats import unresponsive as _unresponsive
from lsuv_fastai.utils import module_names


# ---- dead, correction, derived, trusted
@pytest.mark.parametrize('mean,std,is_dead', [(0., 0., True), (0., 1e-12, True), (0., 2e-12, False), (1e6, 0.09, True),
                                              (1e6, 0.11, False), (-1e6, 0.09, True), (-1e6, 0.11, False), (5., 1., False)])
def test_dead_on_floats_and_tensors(mean, std, is_dead):
    assert dead(mean, std) == is_dead
    assert bool(dead(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))) == is_dead


def test_correction_floats():
    assert correction(2., 4., Settings(), True) == (0.25, -0.5)
    assert correction(2., 4., Settings(mean=0.5, std=2.), True) == (0.5, -0.5)
    assert correction(-2., 0.5, Settings(mean=1., std=4.), True) == (8., 17.)
    assert correction(2., 4., Settings(mean=None), False) == (0.25, 0.)
    assert correction(2., 4., Settings(mean=3.), False) == (0.25, 0.)
    assert correction(3., 0., Settings(), True) == (1., 0.)


def test_correction_tensors():
    a, c = correction(torch.tensor([2., -2., 3.]), torch.tensor([4., 0.5, 0.]), Settings(mean=1., std=4.), True)
    assert torch.equal(a, torch.tensor([1., 8., 1.])) and torch.equal(c, torch.tensor([-1., 17., 0.]))
    a, c = correction(torch.tensor([2.]), torch.tensor([4.]), Settings(mean=None), False)
    assert torch.equal(a, torch.tensor([0.25])) and torch.equal(c, torch.tensor([0.]))


def test_derived():
    assert derived(2., 4., 0.25, -0.5) == (0., 1.)
    assert derived(2., 4., 0.5, 1.) == (2., 2.)
    assert derived(-1., 3., 2., 0.) == (-2., 6.)


@pytest.mark.parametrize('mean,std,goal,ok', [(0., 1., Settings(), True), (1990., 1., Settings(), True), (-1990., 1., Settings(), True),
                                              (2010., 1., Settings(), False), (-2010., 1., Settings(), False),
                                              (0., 1., Settings(std=100.), False), (0., 1., Settings(std=20.), True),
                                              (0., 1., Settings(tol=3e-5), False), (19990., 10., Settings(), True)])
def test_trusted(mean, std, goal, ok):
    assert trusted(mean, std, goal) == ok


def test_affine_in_place():
    y = torch.randn(50)
    for a, c in ((2., 0.5), (0.5, -3.), (1., 0.)):
        z = y.clone(); assert affine_(z, a, c) is z
        torch.testing.assert_close(z, a*y + c, rtol=1e-6, atol=1e-6)
        z = y.clone(); affine_(z, torch.tensor(a, dtype=torch.float64), torch.tensor(c, dtype=torch.float64))
        torch.testing.assert_close(z, a*y + c, rtol=1e-6, atol=1e-6)
    yb = y.bfloat16()
    assert torch.equal(affine_(yb.clone(), 1.001, 0.3), (yb.float()*1.001 + 0.3).bfloat16())


# ---- host and device statistics
def test_moments_and_mean_std():
    y = torch.tensor([[1., 2.], [3., 6.]])
    assert moments(y) == [4., 12., 50.]
    assert moments(y.t()) == [4., 12., 50.]
    assert moments(y, 3.) == [4., 0., 14.]
    assert moments(y.bfloat16()) == [4., 12., 50.]
    assert mean_std(4., 12., 50.) == (3., (14/3)**0.5)
    assert mean_std(1., 2., 4.) == (2., 0.)
    n, m = mean_std(0., 0., 0.)
    assert math.isnan(n) and m == 0.
    assert mean_std(2., 2., 2.) == (1., 0.)
    assert mean_std(2., 4., 10.) == (2., 2**0.5)   # two samples, 1 and 3: unbiased std sqrt(2)
    assert moments(torch.ones(1001, dtype=torch.bfloat16)) == [1001., 1001., 1001.]   # accumulated in float32, not bfloat16
    assert moments(y.requires_grad_()) == [4., 12., 50.]   # (a tensor that requires grad: read as it is)


@pytest.mark.parametrize('stats', [HostStats, DeviceStats])
@pytest.mark.parametrize('scale,shift', [(3., 4.), (1e-3, 50.), (1., -1e4), (2., 0.)])
def test_measure_matches_float64(stats, scale, shift):
    y = torch.randn(64, 33)*scale + shift
    mean, std = (float(v) for v in stats(Local()).measure(y, 0))
    ref = y.double()
    assert mean == pytest.approx(ref.mean().item(), rel=1e-6, abs=1e-6*scale)
    assert std == pytest.approx(ref.std().item(), rel=1e-4)


class TwoRanks:
    "Plays two ranks in one process: each sum adds what the other rank, holding `other`, contributes at that step"
    parts = 2
    def __init__(self, other): self.other, self.tags = other.double().flatten(), []
    def sum(self, v, tag):
        o = self.other; self.tags.append(tag)
        if isinstance(v, list):   # the host path: [n, sum, sum of squares], maybe around a shift (its mean so far)
            shift = 0. if len(self.tags) == 1 else self.shift
            res = [a + b for a, b in zip(v, [o.numel(), (o - shift).sum().item(), (o - shift).dot(o - shift).item()])]
            self.shift = res[1]/res[0]
            return res
        if len(v) == 2:   # the device path, first sum: count and sum
            res = v + torch.stack([torch.tensor(float(o.numel()), dtype=torch.float64), o.sum()]); self.mean = res[1]/res[0]
            return res
        return v + ((o - o.mean())**2).sum() + o.numel()*(o.mean() - self.mean)**2   # the spread around the global mean


@pytest.mark.parametrize('stats', [HostStats, DeviceStats])
@pytest.mark.parametrize('scale,shift', [(2., 5.), (1e-3, 50.)])
def test_measure_over_two_ranks_gives_the_union(stats, scale, shift):
    torch.manual_seed(0)
    a, b = torch.randn(64, 10)*scale + shift, torch.randn(32, 7)*scale*2 + shift
    ranks = TwoRanks(b)
    mean, std = (float(v) for v in stats(ranks).measure(a, 7))
    u = torch.cat([a.flatten(), b.flatten()]).double()
    assert abs(mean - u.mean().item()) <= 1e-5*scale + (1e-7*shift if stats is DeviceStats else 0.)   # var_mean's float32 mean
    assert std == pytest.approx(u.std().item(), rel=1e-5)
    assert ranks.tags and set(ranks.tags) == {7}


def test_device_measure_keeps_float64_and_small_counts():
    y = 1 + 1e-9*torch.randn(1000, dtype=torch.float64)   # float32 would see a constant
    assert DeviceStats(Local()).measure(y, 0)[1].item() == pytest.approx(y.std().item(), rel=1e-6)
    assert DeviceStats(Local()).measure(torch.tensor([1., 3.]), 0)[1].item() == pytest.approx(2**0.5, rel=1e-7)
    yb = (torch.arange(1001)/1000).bfloat16()
    assert DeviceStats(Local()).measure(yb, 0)[0].item() == pytest.approx(yb.double().mean().item(), rel=1e-6)


def test_host_measure_far_from_zero_is_exact():
    "|mean| above 10 std: measured again around the mean, in float64"
    torch.manual_seed(0)
    y = torch.randn(64, 33)*1e-4 + 50
    mean, std = HostStats(Local()).measure(y, 0)
    assert abs(mean - y.double().mean().item()) <= 1e-3*1e-4
    assert std == pytest.approx(y.double().std().item(), rel=1e-4)


def test_host_measure_of_constant_and_non_finite():
    mean, std = HostStats(Local()).measure(torch.full((64, 1000), 3.3), 0)
    assert mean == pytest.approx(3.3, rel=1e-6) and std <= 1e-9*3.3
    assert math.isnan(HostStats(Local()).measure(torch.tensor([1., float('inf')]), 0)[1])
    assert math.isnan(HostStats(Local()).measure(torch.tensor([1., float('nan')]), 0)[0])
    assert math.isnan(HostStats(Local()).measure(torch.tensor([3e19, -3e19]), 0)[1])   # the sum is finite, its squares are not


def test_read():
    from lsuv_fastai.test_utils import counting_host_reads
    t = torch.tensor(2.5, dtype=torch.float64)
    with counting_host_reads() as c: got = DeviceStats(Local()).read([t, 0.1, True, torch.tensor(False), torch.tensor(0.25)])
    assert got == [2.5, 0.1, 1., 0., 0.25]
    assert c.n == 1   # one transfer, float64 throughout
    assert DeviceStats(Local()).read([1., 2.]) == [1., 2.]


def test_paths():
    assert type(statistics_for(torch.device('cpu'), Local())) is HostStats
    assert type(statistics_for(torch.device('cuda'), Local())) is DeviceStats
    with forced_path('device'): assert type(statistics_for(torch.device('cpu'), Local())) is DeviceStats
    with forced_path('host'): assert type(statistics_for(torch.device('cuda'), Local())) is HostStats
    with pytest.raises(ValueError, match="'host' or 'device'"):
        with forced_path('gpu'): pass


# ---- the goal
def test_settings_reached_and_distance():
    g = Settings(mean=0.5, std=2., tol=0.25)
    assert g.reached(0.5, 2.24, True) and g.reached(0.74, 1.76, True) and not g.reached(0.5, 2.26, True)
    assert not g.reached(0.76, 2., True) and g.reached(0.76, 2., False) and not g.reached(0.24, 2., True)
    assert not g.reached(0.5, 1.74, True)
    assert g.reached(0.5, 2.25, True) and g.reached(0.75, 2., True)   # exactly tol away (exact in binary) is reached
    assert g.distance(1.5, 3., True) == 1. and g.distance(1.5, 3., False) == 0.5 and g.distance(-0.5, 1., True) == 1.
    assert g.distance(0.5, 2., True) == 0.


@pytest.mark.parametrize('kw,msg', [(dict(std=0.), '`std`'), (dict(std=-1.), '`std`'), (dict(std=math.inf), '`std`'),
                                    (dict(mean=math.nan), '`mean`'), (dict(mean='0'), '`mean`'), (dict(tol=0.), '`tol`'),
                                    (dict(tol=-1e-3), '`tol`'), (dict(max_iters=0), '`max_iters`'), (dict(max_iters=True), '`max_iters`'),
                                    (dict(max_iters=1.5), '`max_iters`'), (dict(std=True), '`std`')])
def test_settings_refuse(kw, msg):
    with pytest.raises(ValueError, match=msg): Settings(**kw)


def test_settings_accept_and_convert():
    s = Settings(mean=None, std=2, tol=1, max_iters=1)
    assert (s.mean, s.std, s.tol, s.max_iters) == (None, 2., 1., 1) and type(s.std) is float and type(s.max_iters) is int


# ---- targets
def test_selection_and_types():
    mha = nn.MultiheadAttention(8, 2)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), mha, nn.ConvTranspose1d(2, 2, 1), nn.Linear(8, 4), nn.LayerNorm(4))
    assert lsuv_layers(m) == [m[0], mha, m[3], m[4]]
    names = module_names(m)
    assert [n for n, _ in select(m, None, names)] == ['0', '2', '3', '4']
    assert [n for n, _ in select(m, lambda o: [o[4], o[1], o[4]], names)] == ['4', '1']
    assert [n for n, _ in select(m, m[3], names)] == ['3']
    with pytest.raises(ValueError, match='^`modules` lists a Linear that is not part of the model$'): select(m, [nn.Linear(1, 1)], names)
    with pytest.raises(TypeError, match=r'^`modules` must be a module, an iterable of modules, or a function of the model returning one; got int$'):
        select(m, 3, names)
    with pytest.raises(TypeError, match='nn.Module objects, got int'): select(m, [3], names)
    with pytest.raises(ValueError, match='No layer to initialize'): select(m, [], names)
    assert scaled_params(mha) == (mha.out_proj.weight, mha.out_proj.bias)
    assert is_affine(mha) and is_affine(m[0]) and not is_affine(m[1]) and not is_affine(nn.Linear(2, 2).half())
    assert len(LSUV_TYPES) == 8


class Double(nn.Module):
    def forward(self, w): return 2*w


def test_skip_reasons_and_target():
    assert skip_reason(nn.Linear(2, 2)) is None and skip_reason(nn.ReLU()) == 'no weight'
    assert skip_reason(nn.utils.parametrizations.spectral_norm(nn.Linear(2, 2))) == SPECTRAL
    assert skip_reason(nn.utils.spectral_norm(nn.Linear(2, 2))) == SPECTRAL
    assert skip_reason(nn.utils.weight_norm(nn.Linear(2, 2))) is None
    assert skip_reason(nn.utils.parametrizations.weight_norm(nn.Linear(2, 2))) is None
    double = nn.utils.parametrize.register_parametrization(nn.Linear(2, 2), 'weight', Double())
    assert skip_reason(double) == 'parametrized weight'
    both = nn.utils.parametrize.register_parametrization(nn.utils.parametrizations.weight_norm(nn.Linear(2, 2)), 'bias', Double())
    assert skip_reason(both) == 'parametrized weight'
    assert skip_reason(nn.LazyLinear(2)).startswith('lazy module')
    lin = nn.Linear(2, 2)
    t = Target.of('x', lin, 3, Settings())
    assert (t.name, t.module, t.idx, t.weight, t.bias, t.skip, t.shifted, t.affine) == ('x', lin, 3, lin.weight, lin.bias, None, True, True)
    assert not Target.of('x', nn.Linear(2, 2).half(), 0, Settings()).affine
    assert not Target.of('x', lin, 0, Settings(mean=None)).shifted
    assert not Target.of('x', nn.Linear(2, 2, bias=False), 0, Settings()).shifted
    s = Target.of('r', nn.ReLU(), 4, Settings())
    assert (s.name, type(s.module), s.idx) == ('r', nn.ReLU, 4)
    assert (s.skip, s.weight, s.bias, s.shifted, s.affine) == ('no weight', None, None, False, False)


class _Sub(torch.Tensor): pass   # a tensor subclass (fastai's `TensorBase`, a `Parameter`): not the fast path's plain tensor

def test_main_tensor():
    a = torch.ones(2)
    for out in (a, (a, None), [a]): assert main_tensor(out) is a
    for out in ((), (None, a), 3): assert main_tensor(out) is None
    for sub in (a.as_subclass(_Sub), nn.Parameter(torch.ones(2))): assert main_tensor(sub) is sub


# ---- batches
def test_batches():
    a, b = torch.randn(4, 3), torch.randn(2, 3)
    assert one_batch([a])[0] is a
    assert torch.equal(one_batch([a, b])[0], torch.cat([a, b]))
    x = one_batch([(a, [b, 1]), (b, [a, 1])])
    assert torch.equal(x[0], torch.cat([a, b])) and torch.equal(x[1][0], torch.cat([b, a])) and x[1][1] == 1
    with pytest.raises(ValueError, match=r"^LSUV: the batches' inputs 0 differ in shape \(\(4, 3\), \(2, 5\)\); they are concatenated, so only the "
                                         r"first dimension may differ: pad them to one shape, or pass one batch$"): one_batch([a, torch.randn(2, 5)])
    with pytest.raises(ValueError, match=r"inputs 0 'x' differ in shape"): one_batch([({'x': a},), ({'x': torch.randn(2, 5)},)])
    with pytest.raises(ValueError, match=r"inputs 0 1 differ in shape"): one_batch([((a, a),), ((b, torch.randn(2, 5)),)])
    with pytest.raises(ValueError, match='differ in shape'): one_batch([torch.tensor(1.), torch.tensor(2.)])
    d = one_batch([({'x': a, 'k': 'same'},), ({'x': b, 'k': 'same'},)])[0]
    assert torch.equal(d['x'], torch.cat([a, b])) and d['k'] == 'same'
    with pytest.raises(ValueError, match="^LSUV: the batches differ in the structure of their inputs 0 'k'; pass batches of one structure$"):
        one_batch([({'x': a, 'k': 1},), ({'x': b, 'k': 2},)])
    with pytest.raises(ValueError, match='differ in shape'): one_batch([a, torch.tensor(1.)])
    with pytest.raises(ValueError, match='structure'): one_batch([(a, a), (b,)])
    with pytest.raises(ValueError, match='structure'): one_batch([({'x': a},), ({'y': b},)])
    with pytest.raises(TypeError, match="^a batch must be a tensor, or a tuple/list of the model's inputs holding tensors$"): one_batch([[1, 2]])
    assert len(tensors(({'a': a, 'b': [b, 3]}, None))) == 2


@pytest.mark.parametrize('xs,problem', [((torch.randn(3, 2),), 0), ((torch.zeros(0, 2),), 1), ((torch.zeros(0),), 1),
                                        ((torch.tensor([1., math.nan]),), 2), ((torch.tensor([1., math.inf]),), 2),
                                        ((torch.zeros(4, 2), torch.ones(4)), 3), ((torch.ones(3, dtype=torch.long),), 3),
                                        ((torch.zeros(4, 2), torch.arange(4)), 0), ((torch.tensor([True, False]),), 0),
                                        ((torch.tensor([True, True]),), 3), ((torch.tensor([1+1j, 1+2j]),), 0),
                                        ((torch.tensor([1+1j, complex('nan')]),), 2), ((torch.full((3,), 1e20),), 3),
                                        ((torch.tensor([-math.inf, 0.]),), 2), ((torch.zeros(0, 2), torch.randn(2)), 1)])
def test_batch_problem(xs, problem):
    assert batch_problem(xs) == problem


def test_n_samples():
    assert n_samples(({'a': torch.randn(5, 2)}, torch.tensor(1.))) == 5
    assert n_samples((torch.randn(2, 7), torch.randn(3))) == 3
    assert n_samples((torch.tensor(1.),)) == 1


# ---- report
def test_row_and_summary():
    lin = nn.Linear(2, 2)
    t = Target.of('0', lin, 0, Settings())
    r = row(t, Fit(Status.OK, found=(0.5, 2.), final=(0., 1.), iters=1))
    assert r == dict(name='0', type='Linear', mean_before=0.5, std_before=2., mean_after=0., std_after=1., iters=1, status='ok', mean_set=True)
    t2 = Target.of('1', nn.Linear(2, 2, bias=False), 1, Settings())
    rows = [r, row(t2, Fit(Status.OK, found=(1., 3.), final=(0.25, 0.9995), iters=1)), row(t2, Fit(Status.DEAD))]
    assert LSUVReport(rows, 0.125).summary() == 'LSUV: 3 layers (2 ok, 1 dead) in 0.12s; std 0.9995..1.0000, mean +0.0000..+0.0000 where set'
    assert LSUVReport(rows[:1]).summary() == 'LSUV: 1 layer (1 ok) in 0.00s; std 1.0000..1.0000, mean +0.0000..+0.0000'
    assert LSUVReport(rows[2:]).summary() == 'LSUV: 1 layer (1 dead) in 0.00s'


# ---- the pass's decisions
def test_unresponsive():
    assert not _unresponsive((0., 1.), (0., 0.5), 0.5)
    assert _unresponsive((0., 1.), (0., 0.99), 0.5)
    assert _unresponsive((0., 1.), (0., 1.06), 0.5)        # moved less than a tenth of log(2)
    assert not _unresponsive((0., 1.), (0., 1.08), 0.5)
    assert not _unresponsive((0., 1.), (0., 1.), 1.005)     # too small a step to tell
    assert _unresponsive((0., 1.), (0., 1.), 1.02)


@pytest.mark.parametrize('path', ['host', 'device'])
def test_pass_statuses(path):
    "ok, dead, not called, skipped, not converged: one tiny model each, on both paths"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    with torch.no_grad(): m[0].weight.zero_(); m[0].bias.fill_(-1.)
    with forced_path(path), pytest.warns(UserWarning, match='no variance'): rep = lsuv_init(m, torch.randn(16, 4))
    assert rep.df.status.tolist() == ['dead', 'ok', 'ok'] and rep.df.iters.tolist() == [0, 1, 1]
    assert rep.df.std_after[1] == pytest.approx(1., abs=1e-6) and rep.df.mean_after[2] == pytest.approx(0., abs=1e-6)
    assert rep.df.std_before[0] == 0. and rep.df.std_after[0] == 0.

    class Standardized(nn.Linear):   # the output does not follow the weight's scale
        def forward(self, x): w = self.weight; return nn.functional.linear(x, w/w.std())
    torch.manual_seed(0)
    s = nn.Sequential(Standardized(4, 4, bias=False), nn.Linear(4, 2))
    w0 = s[0].weight.detach().clone()
    with forced_path(path), pytest.warns(UserWarning, match='did not reach'): rep = lsuv_init(s, torch.randn(32, 4), mean=None)
    assert rep.df.status.tolist() == ['not converged', 'ok'] and rep.df.iters[0] == 0
    assert torch.equal(s[0].weight, w0)


def test_rerun_path_counts_its_corrections():
    "A custom layer exposing its conv's weight: fitted by re-running it; converges in a few corrections"
    from lsuv_fastai.test_utils import ConvLayer
    torch.manual_seed(0)
    m = nn.Sequential(ConvLayer(1, 4), ConvLayer(4, 4))
    x = torch.randn(16, 1, 8, 8)
    rep = lsuv_init(m, x, modules=[m[0], m[1]])
    assert rep.df.status.tolist() == ['ok', 'ok'] and all(1 < i <= 10 for i in rep.df.iters)
    rep = lsuv_init(m, x, modules=[m[0], m[1]])   # already there: nothing to correct
    assert rep.df.iters.tolist() == [0, 0]
    with pytest.warns(UserWarning, match='did not reach'): rep = lsuv_init(m, x, modules=[m[0]], std=3., max_iters=1)
    assert rep.df.iters.tolist() == [1] and rep.df.status.tolist() == ['not converged']   # one correction is not enough here


# ---- what the mutation check asked for
def test_weight_norm_g_and_scaled_params():
    import warnings
    warnings.filterwarnings('ignore', message='.*torch.nn.utils.weight_norm.* is deprecated')
    from lsuv_fastai.targets import weight_norm_g, lsuv_targets
    new, old = nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.utils.weight_norm(nn.Linear(3, 4))
    assert weight_norm_g(new) is new.parametrizations.weight.original0 and scaled_params(new)[0] is new.parametrizations.weight.original0
    assert weight_norm_g(old) is old.weight_g and scaled_params(old)[0] is old.weight_g
    assert scaled_params(old)[1] is old.bias
    class NamedHook:   # a pre-hook that is no weight norm, though it has `name == 'weight'`
        name = 'weight'
        def __call__(self, m, args): pass
    lin = nn.Linear(3, 4); lin.register_forward_pre_hook(NamedHook())
    lin.weight_g = nn.Parameter(torch.ones(4, 1))   # a parameter of that name, without weight norm
    assert weight_norm_g(lin) is None and scaled_params(lin)[0] is lin.weight
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    assert lsuv_targets(nn.DataParallel(m)) == [m[0], m[2]] and lsuv_targets(m, lambda o: [o[2]]) == [m[2]]


def test_affine_keeps_float64_and_small_counts():
    y = torch.zeros(3, dtype=torch.float64)
    assert affine_(y, 1., 0.1).tolist() == [0.1]*3   # the shift in float64, not rounded to float32
    assert batch_problem((torch.zeros(2, 0),)) == 1      # no elements, though 2 rows
    a, b = torch.tensor([1.]), torch.tensor([3.])
    for stats in (HostStats, DeviceStats):
        assert float(stats(TwoRanks(b)).measure(a, 0)[1]) == pytest.approx(2**0.5, rel=1e-7)   # two samples in all
    yb = (torch.linspace(0, 1, 1001)**2).bfloat16()
    assert DeviceStats(Local()).measure(yb, 0)[0].item() == pytest.approx(yb.double().mean().item(), rel=1e-6)   # not in bfloat16


def test_concat_keeps_equal_values_that_are_not_the_same_object():
    big1, big2 = int('1000000'), int('1000000')
    assert big1 is not big2
    x = one_batch([(torch.randn(2, 3), big1), (torch.randn(1, 3), big2)])
    assert x[0].shape == (3, 3) and x[1] == 1000000


# ---- the head's factor, loaders, the fast path of Target.of
def test_ce_scale():
    from lsuv_fastai.stats import ce_scale
    import torch.nn.functional as F
    torch.manual_seed(0)
    z, y = torch.randn(256, 10)*3, torch.randint(0, 10, (256,))
    s = ce_scale(z, y, Local(), 0)
    assert 0 < s < 1 and F.cross_entropy(s*z, y).item() == pytest.approx(math.log(10) + 0.05, abs=1e-6)
    s2 = ce_scale(z, y, Local(), 0, margin=0.2)
    assert s2 > s and F.cross_entropy(s2*z, y).item() == pytest.approx(math.log(10) + 0.2, abs=1e-6)
    assert ce_scale(z*0.01, y, Local(), 0) == 1.
    assert ce_scale(z.reshape(16, 16, 10), y.reshape(16, 16), Local(), 0) == s   # extra dims are rows
    yi = y.clone(); yi[:128] = -100   # ignored labels count in neither sum
    s3 = ce_scale(z, yi, Local(), 0)
    assert F.cross_entropy(s3*z, yi).item() == pytest.approx(math.log(10) + 0.05, abs=1e-6)
    class Sums:   # a stand-in for the ranks that doubles every sum: the same ratio, so the same factor
        parts = 2
        def __init__(self): self.tags = []
        def sum(self, v, tag): self.tags.append(tag); return [2*x for x in v]
    r = Sums()
    assert ce_scale(z, y, r, 3) == pytest.approx(s, abs=1e-9) and set(r.tags) == {3} and len(r.tags) == 41


def test_loader_batch_and_helpers():
    from torch.utils.data import DataLoader, TensorDataset
    from lsuv_fastai.targets import is_loader, loader_batch, _to
    assert [is_loader(o) for o in (DataLoader([1]), torch.ones(2), (1,), [1], {'a': 1}, 'ab', iter([1]), range(3))] == \
           [True, False, False, False, False, False, True, True]
    x = {'a': torch.ones(2), 'b': [torch.zeros(1), 3], 'c': (torch.ones(1),)}
    moved = _to(x, 'meta')
    assert moved['a'].device.type == 'meta' and moved['b'][0].device.type == 'meta' and moved['b'][1] == 3
    assert isinstance(moved['c'], tuple) and isinstance(moved['b'], list)
    ds = TensorDataset(torch.arange(12.).reshape(6, 2), torch.arange(6), torch.arange(6) + 10)
    xb, yb = loader_batch(DataLoader(ds, batch_size=2), 2)
    assert torch.equal(xb[0], torch.arange(8.).reshape(4, 2)) and torch.equal(xb[1], torch.arange(4))   # all but the last item
    assert torch.equal(yb, torch.arange(4) + 10)
    xb, yb = loader_batch([torch.ones(3, 2), torch.ones(2, 2)], 2)   # tensor batches: the input itself, no labels
    assert xb[0].shape == (5, 2) and yb is None
    xb, yb = loader_batch([(torch.ones(3, 2),)], 1)                  # a batch of one item: that item
    assert xb[0].shape == (3, 2) and yb is None
    xb, yb = loader_batch([(torch.ones(3, 2), torch.ones(3))], 1, device='meta')
    assert xb[0].device.type == 'meta' and yb.device.type == 'meta'
    for n in (0, 1.5, True): 
        with pytest.raises(ValueError, match='`n_batches` must be an int >= 1'): loader_batch([torch.ones(2)], n)
    with pytest.raises(ValueError, match='^LSUV: the DataLoader yielded no batch$'): loader_batch([], 1)
    dl = DataLoader(ds, batch_size=2, shuffle=True)
    state = torch.get_rng_state(); loader_batch(dl, 2)
    assert torch.equal(torch.get_rng_state(), state)   # drawing left the global RNG (and so the shuffle) as it was
    g = torch.Generator().manual_seed(1); dl = DataLoader(ds, batch_size=2, shuffle=True, generator=g)
    gstate = g.get_state(); loader_batch(dl, 1)
    assert torch.equal(g.get_state(), gstate)           # and the loader's own generator


@pytest.mark.parametrize('make,affine,fast', [
    (lambda: nn.Linear(3, 4), True, True), (lambda: nn.Conv2d(3, 4, 3, bias=False), True, True),
    (lambda: nn.Linear(3, 4).double(), True, True), (lambda: nn.Linear(3, 4).half(), False, True),
    (lambda: nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), True, False), (lambda: nn.MultiheadAttention(4, 2), True, False),
    (lambda: nn.utils.weight_norm(nn.Linear(3, 4)), True, True)])   # the old weight norm: a Linear with a pre-hook
def test_target_of_agrees_with_the_general_path(make, affine, fast):
    from lsuv_fastai.targets import _PLAIN
    m = make()
    t = Target.of('m', m, 2, Settings())
    w, b = scaled_params(m)
    assert (t.weight is w, t.bias is b, t.skip, t.affine, t.shifted, t.idx) == (True, True, None, affine, b is not None, 2)
    assert (type(m) in _PLAIN) == fast
    if m._forward_pre_hooks: assert t.weight is m.weight_g   # (the fast path must not take it: it has no `weight` parameter)
    m.register_forward_pre_hook(lambda mod, a: None)   # off the fast path: the same answer
    t2 = Target.of('m', m, 2, Settings())
    assert (t2.weight is w, t2.affine, t2.shifted) == (True, affine, b is not None)


def test_target_of_lazy_is_skipped():
    t = Target.of('l', nn.LazyLinear(3), 0, Settings())
    assert t.skip.startswith('lazy module') and t.weight is None and not t.affine
