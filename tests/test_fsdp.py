"""LSUV on FSDP2-sharded models (`fully_shard`): 2 CPU processes on gloo, spawned as in `test_distributed.py`.

One spawned run executes every case in a row on both ranks (the failing ones last) and saves its results per rank;
the tests compare them with single-process `lsuv_init` on the concatenated global batch, in the pytest process."""
import os, sys, traceback
import pytest, torch, torch.distributed as dist
from torch import nn
sys.path.insert(0, os.path.dirname(__file__))
from test_distributed import _spawn, WORLD, Rerun, assert_close, _learner, mlp
from lsuv_fastai.core import lsuv_init

# Sharded results against a single process: float32 weights scaled by factors computed from the same sums added in
# another order (per rank, then over ranks): the factors differ by a few float32 ulps (1.2e-7 each), and so do the
# weights. 1e-6 relative to each tensor's norm is 8 ulps: a shard written in the wrong place, a stale gathered copy or
# an undone correction are off by whole percents.
REL = 1e-6

def net(seed=0):
    "Blocks (one with a layer fitted by re-running it) sharded on their own, the rest in the root; uneven row counts (33, 5)"
    torch.manual_seed(seed)
    return nn.Sequential(nn.Sequential(nn.Linear(12, 33), nn.ReLU()), nn.Sequential(nn.Linear(33, 32), nn.ReLU()),
                         nn.Sequential(Rerun(32, 32), nn.Tanh()), nn.Linear(32, 16), nn.ReLU(), Rerun(16, 5))

def shard(m):
    "FSDP2 as its docs suggest: each block, then the root"
    from torch.distributed.fsdp import fully_shard
    for blk in m[:3]: fully_shard(blk)
    return fully_shard(m)

def batch(rank, n=32):
    "Rank `rank`'s batch, of a distribution of its own, so that the use of the global batch shows"
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(rank)) * (1 + 2*rank) + rank

def full(m)->dict:
    "The whole weights (`full_tensor()` of the shards), as a plain state dict"
    return {k: (v.full_tensor() if hasattr(v, 'full_tensor') else v).detach().clone() for k,v in m.state_dict().items()}

def local(m)->dict: return {k: (v.to_local() if hasattr(v, 'to_local') else v).detach().clone() for k,v in m.state_dict().items()}

def single_process(x, start:dict|None=None, **kw)->dict:
    m = net()
    if start is not None: m.load_state_dict(start)
    lsuv_init(m, x, **kw); return dict(m.state_dict())

def global_batch(): return torch.cat([batch(r) for r in range(WORLD)])

def _error(f)->str:
    try: f(); return 'no error'
    except Exception as e: return f'{type(e).__name__}: {e}'

# ---------------------------------------------------------------- the spawned run
def _after(res, x):
    "LSUV after fully_shard, then a training step"
    m = shard(net())
    ps = list(m.parameters())
    rep = lsuv_init(m, x)
    res['same_params'] = all(p is q for p,q in zip(ps, m.parameters()))   # the shards, not gathered copies (before `full`, which reshards)
    res['status'],res['weights'] = rep.df.status.tolist(), full(m)
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)   # (before a forward: the root's gathered copies are no parameters to train)
    with torch.no_grad(): res['out'] = m(x)   # the next forward sees the new weights (none left gathered from the pass)
    loss = m(x).pow(2).mean(); loss.backward(); opt.step()
    res['loss'] = loss.item()
    res['grads_finite'] = all(p.grad is not None and bool(p.grad.full_tensor().isfinite().all()) for p in m.parameters())
    res['stepped'] = full(m)

def _after_forward(res, x):
    "A forward under no_grad before LSUV leaves the root's weights gathered: LSUV still writes into the shards"
    m = shard(net())
    with torch.no_grad(): m(x)
    lsuv_init(m, x); res['after_forward'] = full(m)

def _device_path(res, x):
    "The path an accelerator takes (statistics kept as tensors, corrections written tensor by tensor), forced on the CPU"
    from lsuv_fastai.stats import forced_path
    m = shard(net())
    with forced_path('device'): rep = lsuv_init(m, x)
    res['device_status'],res['device'] = rep.df.status.tolist(), full(m)

def _ortho(res, x):
    m = shard(net()); rep = lsuv_init(m, x, ortho=True)
    res['ortho_status'],res['ortho'] = rep.df.status.tolist(), full(m)

def _meta(res, x):
    "The meta-device recipe: build on meta, shard, materialize, initialize, then LSUV"
    with torch.device('meta'): m = net()
    shard(m); m.to_empty(device='cpu')
    torch.manual_seed(1)
    for mod in m.modules():
        if hasattr(mod, 'reset_parameters'): mod.reset_parameters()
    res['meta_start'] = full(m)
    rep = lsuv_init(m, x)
    res['meta_status'],res['meta'] = rep.df.status.tolist(), full(m)

class Boom(nn.Module):
    def forward(self, x): raise RuntimeError('boom')

def _undone(res, x):
    "A pass that raises after layers were corrected (closed form and re-run, in blocks and the root) leaves the shards as they were"
    m = net(); m.append(Boom()); shard(m)
    before = local(m)
    res['undone_error'] = _error(lambda: lsuv_init(m, x))
    res['undone_unchanged'] = all(torch.equal(v, before[k]) for k,v in local(m).items())

def _unsynced(res, x):
    m = shard(net()); before = local(m)
    res['unsynced_error'] = _error(lambda: lsuv_init(m, x, sync=False))
    res['unsynced_unchanged'] = all(torch.equal(v, before[k]) for k,v in local(m).items())

def _tensor_parallel(res, x):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module, ColwiseParallel, RowwiseParallel
    tp = parallelize_module(net(), init_device_mesh('cpu', (WORLD,)), {'3': ColwiseParallel(), '5': RowwiseParallel()})
    before = local(tp)
    res['tp_error'] = _error(lambda: lsuv_init(tp, x))
    res['tp_unchanged'] = all(torch.equal(v, before[k]) for k,v in local(tp).items())

CASES = dict(after=_after, after_forward=_after_forward, device_path=_device_path, ortho=_ortho, meta=_meta, undone=_undone,
             unsynced=_unsynced, tensor_parallel=_tensor_parallel)

def _worker(rank, res):
    "Every case in a row (refusals last: should one rank not raise, the ranks would be out of step); a case's error is kept as its result"
    for k,f in CASES.items():
        try: f(res, batch(rank))
        except Exception: res[f'{k} failed'] = traceback.format_exc()

def ran(runs, case):
    "Raise with the traceback if `case` failed on a rank"
    for r in range(WORLD): assert f'{case} failed' not in runs[r], f"rank {r}:\n{runs[r][f'{case} failed']}"
    return runs

@pytest.fixture(scope='module')
def runs(tmp_path_factory): return _spawn(_worker, tmp_path_factory.mktemp('fsdp'))

def _fastai_worker(rank, res):
    "A fastai Learner training an FSDP2-sharded model (each Linear, then the root) with LSUVCallback, no distrib_ctx"
    import fastai.callback.progress   # (no_bar)
    from fastai.callback.core import Callback
    from lsuv_fastai.callback import LSUVCallback, training_batch
    class AfterLSUV(Callback):
        order = LSUVCallback.order + 1
        def before_fit(self): res['lsuv'] = full(self.model)
    learn = _learner([LSUVCallback(), AfterLSUV()])
    from torch.distributed.fsdp import fully_shard
    for i in (0, 2, 4): fully_shard(learn.model[i])
    fully_shard(learn.model)
    res['init'],res['batch'] = full(learn.model), training_batch(learn)[0]   # what the callback uses on this rank
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    res['report'],res['fit'],res['losses'] = learn.lsuv.report.df, full(learn.model), learn.recorder.values

@pytest.fixture(scope='module')
def fastai_runs(tmp_path_factory): return _spawn(_fastai_worker, tmp_path_factory.mktemp('fsdp_fastai'))

# ---------------------------------------------------------------- the tests
def test_after_fully_shard_every_layer_ok(runs):
    ran(runs, 'after')
    for r in range(WORLD): assert runs[r]['status'] == ['ok']*5, runs[r]['status']

def test_after_fully_shard_matches_single_process_on_global_batch(runs):
    ran(runs, 'after')
    ref = single_process(global_batch())
    for r in range(WORLD): assert_close(runs[r]['weights'], ref, rel=REL)

def test_after_a_forward_under_no_grad(runs):
    ran(runs, 'after_forward')
    ref = single_process(global_batch())
    for r in range(WORLD): assert_close(runs[r]['after_forward'], ref, rel=REL)

def test_after_fully_shard_parameters_kept_and_next_forward_uses_new_weights(runs):
    ran(runs, 'after')
    ref = net(); ref.load_state_dict(single_process(global_batch()))
    for r in range(WORLD):
        assert runs[r]['same_params']
        with torch.no_grad(): y = ref(batch(r))
        err = ((runs[r]['out'] - y).norm() / y.norm()).item()
        assert err <= REL, f'rank {r}: relative difference {err:.2e}'

def test_after_fully_shard_training_step(runs):
    ran(runs, 'after')
    for r in range(WORLD):
        assert torch.isfinite(torch.tensor(runs[r]['loss']))
        assert runs[r]['grads_finite']
    assert_close(runs[0]['stepped'], runs[1]['stepped'], rel=0)   # one model: every rank sees the same full weights
    assert not torch.equal(runs[0]['stepped']['3.weight'], runs[0]['weights']['3.weight'])

def test_device_path_matches_single_process(runs):
    from lsuv_fastai.stats import forced_path
    ran(runs, 'device_path')
    with forced_path('device'): ref = single_process(global_batch())
    for r in range(WORLD):
        assert runs[r]['device_status'] == ['ok']*5, runs[r]['device_status']
        assert_close(runs[r]['device'], ref, rel=REL)

def test_ortho_on_shards_matches_single_process(runs):
    ran(runs, 'ortho')
    ref = single_process(global_batch(), ortho=True)
    for r in range(WORLD):
        assert runs[r]['ortho_status'] == ['ok']*5, runs[r]['ortho_status']
        assert_close(runs[r]['ortho'], ref, rel=REL)

def test_meta_device_recipe(runs):
    r0 = ran(runs, 'meta')[0]
    assert r0['meta_status'] == ['ok']*5, r0['meta_status']
    assert_close(r0['meta'], single_process(global_batch(), start=r0['meta_start']), rel=REL)
    assert_close(runs[1]['meta'], r0['meta'], rel=0)

def test_failed_pass_leaves_shards_unchanged(runs):
    ran(runs, 'undone')
    for r in range(WORLD):
        assert runs[r]['undone_error'] == 'RuntimeError: boom', runs[r]['undone_error']
        assert runs[r]['undone_unchanged']

def test_sync_false_refused_on_sharded_model(runs):
    ran(runs, 'unsynced')
    for r in range(WORLD):
        assert 'sync=False' in runs[r]['unsynced_error'], runs[r]['unsynced_error']
        assert 'each rank holds a different part of the weights' in runs[r]['unsynced_error'], runs[r]['unsynced_error']
        assert runs[r]['unsynced_unchanged']

def test_tensor_parallel_refused_with_model_unchanged(runs):
    ran(runs, 'tensor_parallel')
    for r in range(WORLD):
        e = runs[r]['tp_error']
        assert e.startswith('ValueError: LSUV cannot initialize'), e
        assert "'3.weight' (Shard(dim=0))" in e, e
        assert "'5.weight' (Shard(dim=1))" in e, e
        assert 'tensor parallel' in e, e
        assert runs[r]['tp_unchanged']

def test_callback_on_sharded_model(fastai_runs):
    "The callback initializes the sharded model from the global batch (this rank's training batch on each rank), then trains"
    r0,r1 = fastai_runs
    assert (r0['report'].status == 'ok').all(), r0['report']
    assert r0['report'].equals(r1['report'])
    assert not torch.equal(r0['batch'], r1['batch'])
    m = mlp(); m.load_state_dict(r0['init'])
    lsuv_init(m, torch.cat([r0['batch'], r1['batch']]))
    for r in range(WORLD): assert_close(fastai_runs[r]['lsuv'], dict(m.state_dict()), rel=REL)
    assert_close(r0['fit'], r1['fit'], rel=0)
    assert not torch.equal(r0['fit']['0.weight'], r0['lsuv']['0.weight'])
    assert torch.isfinite(torch.tensor(r0['losses'])).all()
