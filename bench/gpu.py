"""LSUV on an accelerator: cost against one forward pass, and how often a pass waits for the device.

    python bench/gpu.py                  # on a CUDA machine: writes bench/results/gpu.md
    python bench/gpu.py --device cpu --quick   # smoke test of this script anywhere (tiny sizes)

Models: torchvision's resnet50 at batch 256 (3x224x224), in float32 and under bf16/fp16 autocast (what fastai's
`to_fp16` and `to_bf16` use), plus the README's 30-layer MLP and the demo's 20-layer Conv1d. For each: the median wall
time of one no-grad forward pass in train mode, of `lsuv_init` (the device path, its default on an accelerator) and of
`lsuv_init` with the host path forced (statistics read layer by layer, as on the CPU), each on a fresh copy of the model,
the device synchronized before and after every call; ratios are paired within a repeat.

Host synchronizations: `torch.cuda.set_sync_debug_mode('warn')` makes PyTorch warn at every operation that waits for
the device; the warnings during one `lsuv_init` of plain MLPs of growing depth are counted, on both paths.
"""
import argparse, copy, statistics, sys, time, warnings
from contextlib import nullcontext
from pathlib import Path
import torch
from torch import nn
import torchvision.models as tvm
sys.path.insert(0, str(Path(__file__).parent))
from common import machine_line, code_version, md_table
from lsuv_fastai.stats import forced_path
from lsuv_fastai.core import lsuv_init, layer_stats

RESULTS = Path(__file__).parent/'results'

def readme_mlp(): return nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(30)], nn.Linear(64, 10))
def demo_conv1d():
    from lsuv_fastai.demo import plain_convnet
    return plain_convnet(20)
def mlp(depth, width=256): return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])

def cases(quick):
    img = (8, 3, 64, 64) if quick else (256, 3, 224, 224)
    return {'resnet50': (lambda: tvm.resnet50(weights=None), img),
            'README mlp30x64': (readme_mlp, (256, 64)),
            'demo conv1d20': (demo_conv1d, (32, 1, 40))}

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def autocast(device, dtype):
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

def timed(fn, device):
    sync(device); t = time.perf_counter(); fn(); sync(device)
    return time.perf_counter() - t

def forward(m, x, device, dtype):
    m.train()
    with torch.no_grad(), autocast(device, dtype): m(x)

def ours(m, x, device, dtype, path=None):
    with (forced_path(path) if path else nullcontext()), autocast(device, dtype): return lsuv_init(m, x)

def time_case(build, shape, device, dtype, reps):
    torch.manual_seed(0)
    model, x = build().to(device), torch.randn(shape, device=device)
    runs = {k: [] for k in ('forward', 'device path', 'host path')}
    fns = {'forward': lambda m: forward(m, x, device, dtype), 'device path': lambda m: ours(m, x, device, dtype),
           'host path': lambda m: ours(m, x, device, dtype, 'host')}
    for i in range(reps + 1):   # the first repeat warms up (kernels, cudnn's algorithm search, lazy imports)
        for k, fn in fns.items():
            fresh = copy.deepcopy(model); sync(device)
            t = timed(lambda: fn(fresh), device)
            if i: runs[k].append(t*1e3)
    rep = ours(copy.deepcopy(model), x, device, dtype)
    med = lambda v: statistics.median(v)
    ratio = lambda k: statistics.median(a/b for a, b in zip(runs[k], runs['forward']))
    return dict(forward=med(runs['forward']), device=med(runs['device path']), host=med(runs['host path']),
                device_ratio=ratio('device path'), host_ratio=ratio('host path'), layers=len(rep.df),
                statuses=', '.join(f'{n} {s}' for s, n in rep.df.status.value_counts().items()))

def count_syncs(device, depths, path):
    "Warnings of `torch.cuda.set_sync_debug_mode('warn')` during one `lsuv_init` of plain MLPs of each depth"
    res = {}
    for d in depths:
        torch.manual_seed(0); m, x = mlp(d, 64).to(device), torch.randn(128, 64, device=device)
        ours(copy.deepcopy(m), x, device, None, path)   # warm-up
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try: ours(m, x, device, None, path)
            finally: torch.cuda.set_sync_debug_mode(0)
        res[d] = sum('synchroniz' in str(w.message) for w in ws)
    return res

def check_targets(device):
    "Independent re-measurement on the device: every 'ok' layer of resnet18 within 1e-3 of std 1"
    torch.manual_seed(0)
    m, x = tvm.resnet18(num_classes=10).to(device), torch.randn(16, 3, 64, 64, device=device)
    rep = lsuv_init(m, x)
    stats = layer_stats(m, x)
    worst = max(abs(s[1] - 1) for s in stats.values())
    return f"resnet18 on {device.type}: {len(rep.df)} layers, {', '.join(f'{n} {s}' for s, n in rep.df.status.value_counts().items())}; " \
           f"worst re-measured |std - 1| = {worst:.2e}"

def main(device='cuda', quick=False, reps=7):
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available(): sys.exit('no CUDA device: run with --device cpu for a smoke test')
    warnings.filterwarnings('ignore', message='LSUV')
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    dtypes = {'float32': None, 'bf16 autocast': torch.bfloat16, 'fp16 autocast': torch.float16} if device.type == 'cuda' \
             else {'float32': None, 'bf16 autocast': torch.bfloat16}
    rows = []
    for cname, (build, shape) in cases(quick).items():
        for dname, dtype in (dtypes.items() if cname == 'resnet50' else [('float32', None)]):
            print(f'timing {cname} {dname}', flush=True)
            r = time_case(build, shape, device, dtype, 1 if quick else reps)
            rows.append([cname, 'x'.join(map(str, shape)), dname, r['layers'], f"{r['forward']:.1f}", f"{r['device']:.1f}",
                         f"{r['device_ratio']:.2f}", f"{r['host']:.1f}", f"{r['host_ratio']:.2f}", r['statuses']])
    md = [f'# LSUV on {name}', '', machine_line() + f'; device: {name}', '', f'Code: {code_version()}.', '', __doc__, '',
          md_table(['model', 'batch', 'precision', 'layers', 'forward ms', 'ours ms (device path)', 'ours/forward',
                    'ours ms (host path)', 'host path/forward', 'statuses'], rows), '']
    if device.type == 'cuda':
        depths = (10, 50) if quick else (10, 50, 200)
        syncs = {p: count_syncs(device, depths, p) for p in ('device', 'host')}
        md += ['## Host synchronizations per pass', '',
               md_table(['path', *[f'{d} layers' for d in depths]], [[p, *s.values()] for p, s in syncs.items()]), '']
    md += ['## Independent re-measurement', '', check_targets(device), '']
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS/('gpu_quick.md' if quick or device.type != 'cuda' else 'gpu.md')
    out.write_text('\n'.join(md) + '\n')
    print('\n'.join(md))

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda')
    p.add_argument('--quick', action='store_true', help='tiny sizes, one repeat')
    p.add_argument('--reps', type=int, default=7)
    main(**vars(p.parse_args()))
