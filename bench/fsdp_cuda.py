"""LSUV on an FSDP2-sharded model on CUDA with NCCL: the device variant of tests/test_fsdp.py (gloo, CPU). Run by
bench/gpu.sh with one process per GPU (NCCL takes a GPU per rank, so on a one-GPU machine the world is 1: FSDP2 still
wraps every parameter in a DTensor, and the pass takes the device path, statistics kept on the GPU):

    torchrun --nproc_per_node=$(python3 -c 'import torch; print(torch.cuda.device_count())') bench/fsdp_cuda.py
    torchrun --nproc_per_node=2 bench/fsdp_cuda.py --cpu     # smoke test of this script anywhere (gloo)

On every rank: after `fully_shard` every layer is 'ok', the full weights equal a single-process LSUV on the global batch
(relative 1e-5: float32 sums in another order, TF32 off), a training step works; then the meta-device recipe. Exits 1
if a check fails."""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from test_fsdp import net, shard, batch, full
from lsuv_fastai.core import lsuv_init

REL = 1e-5

def rel(a:dict, b:dict)->float:
    "The largest difference over the tensors, relative to each tensor's norm"
    return max(((a[k].double() - b[k].double()).norm() / b[k].double().norm()).item() for k in b)

def single_process(xs, dev, start=None)->dict:
    m = net().to(dev)
    if start is not None: m.load_state_dict(start)
    lsuv_init(m, xs, sync=False); return m.state_dict()   # (the global batch here, not summed over ranks again)

def main():
    cpu = '--cpu' in sys.argv
    dist.init_process_group('gloo' if cpu else 'nccl')
    rank,world = dist.get_rank(), dist.get_world_size()
    if cpu: dev = torch.device('cpu')
    else:
        dev = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))); torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    x, xs = batch(rank).to(dev), torch.cat([batch(r) for r in range(world)]).to(dev)
    res = {}
    # After fully_shard, then a training step
    m = shard(net().to(dev))
    rep = lsuv_init(m, x)
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    res['status ok'] = set(rep.df.status) == {'ok'}
    res['rel. difference'] = rel(full(m), single_process(xs, dev))
    loss = m(x).pow(2).mean(); loss.backward(); opt.step()
    res['step finite'] = bool(torch.isfinite(loss)) and all(torch.isfinite(v).all().item() for v in full(m).values())
    # The meta-device recipe
    with torch.device('meta'): m = net()
    shard(m); m.to_empty(device=dev)
    torch.manual_seed(1)
    for mod in m.modules():
        if hasattr(mod, 'reset_parameters'): mod.reset_parameters()
    start = full(m)
    rep = lsuv_init(m, x)
    res['meta status ok'] = set(rep.df.status) == {'ok'}
    res['meta rel. difference'] = rel(full(m), single_process(xs, dev, start))
    print(f'rank {rank}/{world} on {dev} ({torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"}): {res}', flush=True)
    failed = [k for k,v in res.items() if (v > REL if isinstance(v, float) else not v)]
    dist.destroy_process_group()
    if failed: sys.exit(f'rank {rank}: FSDP2 checks failed: {failed}')

if __name__ == '__main__': main()
