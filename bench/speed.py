"""Cost of `lsuv_fastai.lsuv_init` against one plain forward and against the `lsuv` package (0.3.0, "peer").

    python bench/speed.py            # full run, writes bench/results/speed.md and speed.png
    python bench/speed.py --quick    # smoke test (tiny sizes, 1 repeat, 1 thread), writes speed_quick.md/png
    python bench/speed.py --threads 1  # stable numbers on a loaded machine (default: torch's thread count)
    python bench/speed.py --profile  # also add a torch.profiler breakdown of lsuv_init vs forward on resnet50
"""
import argparse, copy, gc, os, statistics, sys, time, warnings
from pathlib import Path
import torch
from torch import nn
import torchvision.models as tvm
from torchvision.models.vision_transformer import VisionTransformer
import lsuv
from lsuv_fastai.core import lsuv_init, lsuv_layers
sys.path.insert(0, str(Path(__file__).parent))
from common import (TimeLimit, can_measure_memory, code_version, machine_line, md_table, release_freed_memory,
                    time_limit, timed_call)

RESULTS = Path(__file__).parent/'results'
FULL = dict(img=(32, 3, 64, 64), vit=(32, 3, 32, 32), mlp_width=256, mlp_batch=256, depths=(10, 50, 200),
            reps=7, peer_reps=3, peer_budget_s=40, peer_cap_s=90, mem_reps=5, mem_warmups=2)
QUICK = dict(img=(4, 3, 32, 32), vit=(4, 3, 32, 32), mlp_width=32, mlp_batch=32, depths=(4, 8, 16),
             reps=1, peer_reps=1, peer_budget_s=5, peer_cap_s=5, mem_reps=1, mem_warmups=1)

# ---- models
def mlp(depth, width):
    "Plain MLP: `depth` x (Linear + ReLU), PyTorch default init"
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])

def small_vit():
    return VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256)

def readme_mlp():
    "The README's plain-PyTorch example: 30 x (Linear(64, 64) + ReLU) + Linear(64, 10)"
    return nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(30)], nn.Linear(64, 10))

def demo_conv1d():
    "The demo's net: a plain 20-layer Conv1d (19 convs of width 32 + Linear) for MNIST-1D"
    from lsuv_fastai.demo import plain_convnet
    return plain_convnet(20)

def model_cases(cfg):
    "name -> (model builder, input shape)"
    mlp_shape = (cfg['mlp_batch'], cfg['mlp_width'])
    return {'resnet18': (lambda: tvm.resnet18(weights=None), cfg['img']),
            'resnet50': (lambda: tvm.resnet50(weights=None), cfg['img']),
            'vgg11':    (lambda: tvm.vgg11(weights=None), cfg['img']),
            'vit-tiny': (small_vit, cfg['vit']),
            f"mlp{cfg['depths'][1]}": (lambda: mlp(cfg['depths'][1], cfg['mlp_width']), mlp_shape),
            'README mlp30x64': (readme_mlp, (256, 64)),
            'demo conv1d20': (demo_conv1d, (32, 1, 40))}

# ---- the three things we time; each gets its own fresh copy of the model
def run_forward(m, x):
    m.train()  # same mode as lsuv_init's default (train=True)
    with torch.no_grad(): m(x)

def run_ours(m, x): lsuv_init(m, x)

def lsuv_version():
    from importlib.metadata import version
    return version('lsuv')

def run_peer(m, x): lsuv.lsuv_with_singlebatch(m, x, do_orthonorm=False, verbose=False)

METHODS = dict(forward=run_forward, ours=run_ours, peer=run_peer)

def measure(method, model, x, cap_s=0, memory=False):
    "(seconds, peak extra MB or None) of `method` on a fresh deepcopy of `model`, or None if it ran past `cap_s`"
    m = copy.deepcopy(model)
    gc.collect()
    try:
        with time_limit(cap_s): return timed_call(lambda: METHODS[method](m, x), memory)
    except TimeLimit: return None

def build_case(build, shape):
    torch.manual_seed(0)
    return build(), torch.randn(shape)

def time_model(build, shape, cfg):
    """Wall times of interleaved repeats (forward, ours, peer, forward, ...); the peer in the first `peer_reps` only,
    and no more once it has taken `peer_budget_s` in all (each of its runs is tens of forwards: it varies much less)"""
    model, x = build_case(build, shape)
    for meth in ('forward', 'ours'): measure(meth, model, x)  # warm-up: kernels, lazy imports
    with torch.no_grad(): model.eval()(x)  # the peer runs in eval mode: warm that path too
    runs, capped = {k: [] for k in METHODS}, False
    for i in range(cfg['reps']):
        for meth in METHODS:
            peer_done = capped or i >= cfg['peer_reps'] or sum(runs['peer']) >= cfg['peer_budget_s']*1e3
            if meth == 'peer' and peer_done: continue
            r = measure(meth, model, x, cfg['peer_cap_s'] if meth == 'peer' else 0)
            if r is None: capped = True
            else: runs[meth].append(r[0]*1e3)
    return summarize(runs, capped, cfg, targets=len(lsuv_layers(model)), shape=tuple(shape))

def paired_ratio(a, b):
    "Median over repeats of a[i]/b[i]: each ratio compares calls made back to back, robust to drifting load"
    return statistics.median(x/y for x, y in zip(a, b)) if a and b else None

def summarize(runs, capped, cfg, **info):
    "Median ms per method and paired ratios; a capped peer counts as `peer_cap_s` (a lower bound)"
    peer = runs['peer'] or ([cfg['peer_cap_s']*1e3] if capped else [])
    med = lambda v: statistics.median(v) if v else None
    return dict(info, n=len(runs['forward']), n_peer=len(runs['peer']), peer_capped=capped,
                forward_ms=med(runs['forward']), ours_ms=med(runs['ours']), peer_ms=med(peer),
                ours_fwd=paired_ratio(runs['ours'], runs['forward']),
                ours_fwd_best=ratio(min(runs['ours']), min(runs['forward'])),
                peer_fwd=paired_ratio(peer, runs['forward']), peer_ours=paired_ratio(peer, runs['ours']))

def memory_model(build, shape, reps, warmups=2):
    "Median peak extra MB of forward and ours (after `release_freed_memory`: run after all the timings)"
    model, x = build_case(build, shape)
    for meth in ('forward', 'ours')*warmups: measure(meth, model, x)  # the first calls fill some caches
    mb = {meth: statistics.median(measure(meth, model, x, memory=True)[1] for _ in range(reps))
          for meth in ('forward', 'ours')}
    return dict(forward_mb=mb['forward'], ours_mb=mb['ours'], mem_ratio=ratio(mb['ours'], mb['forward']))

# ---- formatting
def ratio(a, b): return a/b if a is not None and b else None

def fmt(v, nd=1, lower_bound=False):
    return 'n/a' if v is None else ('>= ' if lower_bound else '') + f'{v:.{nd}f}'

def peer_cells(r, nd_ms=0):
    "Peer ms, peer/forward and peer/ours, marked '>=' when the peer hit the time cap"
    lb = r['peer_capped'] and not r['n_peer']
    return [fmt(r['peer_ms'], nd_ms, lb), fmt(r['peer_fwd'], 1, lb), fmt(r['peer_ours'], 1, lb)]

def time_table(results):
    rows = [[name, 'x'.join(map(str, r['shape'])), r['targets'], fmt(r['forward_ms']), fmt(r['ours_ms']),
             fmt(r['ours_fwd'], 2), fmt(r['ours_fwd_best'], 2), *peer_cells(r),
             f"{r['n']} / {r['n_peer']}" + (' (capped)' if r['peer_capped'] else '')] for name, r in results.items()]
    return md_table(['model', 'batch', 'LSUV layers', 'forward ms (median)', 'ours ms', 'ours/forward',
                     'ours/forward (best runs)', 'peer ms', 'peer/forward', 'peer/ours', 'runs (ours / peer)'], rows)

def memory_table(results):
    rows = [[name, fmt(r['forward_mb']), fmt(r['ours_mb']), fmt(r['mem_ratio'], 2)] for name, r in results.items()]
    return md_table(['model', 'forward peak extra MB', 'ours peak extra MB', 'ours/forward'], rows)

def depth_table(depth_results):
    rows = [[d, fmt(r['forward_ms']), fmt(r['ours_ms']), fmt(r['ours_fwd'], 2), *peer_cells(r)]
            for d, r in depth_results.items()]
    return md_table(['MLP layers', 'forward ms', 'ours ms', 'ours/forward', 'peer ms', 'peer/forward', 'peer/ours'], rows)

TARGETS = [('time: ours/forward', 'ours_fwd', '<=', 1.15), ('time: peer/ours', 'peer_ours', '>=', 20),
           ('peak memory: ours/forward', 'mem_ratio', '<=', 1.5)]
ALL_MODELS_TIME = 1.3   # ours/forward on every model

def target_table(results, ref):
    "PASS/FAIL of the targets on the `ref` model, the worst model, and ours/forward on every model"
    rows = []
    for label, key, op, lim in TARGETS:
        ok = lambda v: v is not None and (v <= lim if op == '<=' else v >= lim)
        vals = [(r[key], n) for n, r in results.items() if r[key] is not None]
        worst_v, worst_n = (max if op == '<=' else min)(vals, default=(None, '-'))
        rows.append([label, f'{op} {lim}', fmt(results[ref][key], 2), 'PASS' if ok(results[ref][key]) else 'FAIL',
                     f'{fmt(worst_v, 2)} ({worst_n}): {"PASS" if ok(worst_v) else "FAIL"}'])
    worst = max(((r['ours_fwd'], n) for n, r in results.items() if r['ours_fwd'] is not None), default=(None, '-'))
    rows.append(['time: ours/forward, every model', f'<= {ALL_MODELS_TIME}', '', '',
                 f"{fmt(worst[0], 2)} ({worst[1]}): {'PASS' if worst[0] is not None and worst[0] <= ALL_MODELS_TIME else 'FAIL'}"])
    return md_table(['target', 'limit', ref, 'result', 'worst model'], rows)

# ---- host reads: how often a pass waits for the device
def host_reads(depths, width=32, batch=64):
    "{path: {depth: host reads of one lsuv_init}} for a plain MLP, on the host path (CPU) and the device path"
    from lsuv_fastai.stats import forced_path
    from lsuv_fastai.test_utils import counting_host_reads
    res = {}
    for path in ('host', 'device'):
        res[path] = {}
        with forced_path(path):
            for d in depths:
                torch.manual_seed(0); m, x = mlp(d, width), torch.randn(batch, width)
                with counting_host_reads() as c: lsuv_init(m, x)
                res[path][d] = c.by
    return res

def host_reads_table(res):
    depths = list(next(iter(res.values())))
    label = {'host': 'host path (the CPU)', 'device': 'device path (accelerators; forced here on the CPU)'}
    rows = [[label[p], *[sum(res[p][d].values()) for d in depths],
             ', '.join(f'{k}: {v}' for k, v in res[p][depths[-1]].items())] for p in res]
    return md_table(['path', *[f'{d} layers' for d in depths], f'by method ({depths[-1]} layers)'], rows)

def plot_depth(depth_results, path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ds = list(depth_results)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for meth, style in (('forward', 'k--o'), ('ours', 'C0-o'), ('peer', 'C3-o')):
        a1.plot(ds, [depth_results[d][f'{meth}_ms'] for d in ds], style, label=meth)
        a2.plot(ds, [depth_results[d].get(f'{meth}_fwd', 1.) for d in ds], style, label=meth)
    for ax, yl in ((a1, 'wall time (ms, median)'), (a2, 'time / one forward')):
        ax.set(xscale='log', yscale='log', xlabel='MLP depth (Linear+ReLU layers)', ylabel=yl)
        ax.legend(); ax.grid(alpha=.3)
    a1.set_title('LSUV cost vs depth'); a2.set_title('in units of one forward pass')
    fig.tight_layout(); fig.savefig(path, dpi=120); plt.close(fig)

# ---- profile: where lsuv_init spends time beyond the forward
def op_times_ms(fn, model, x):
    "{aten op: self CPU ms} and total wall ms of one `fn` call on a fresh copy of `model`, under torch.profiler"
    from torch.profiler import ProfilerActivity, profile
    m = copy.deepcopy(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter(); fn(m, x); wall = (time.perf_counter() - t)*1e3
    return {e.key: e.self_cpu_time_total/1e3 for e in prof.key_averages()}, wall

def profile_breakdown(build, shape, top=12):
    "Markdown table of the ops where lsuv_init spends more time than the plain forward (medians of 3 profiled runs)"
    model, x = build_case(build, shape)
    run_forward(copy.deepcopy(model), x); run_ours(copy.deepcopy(model), x)
    def med(fn):
        runs = [op_times_ms(fn, model, x) for _ in range(3)]
        keys = set().union(*(r[0] for r in runs))
        return {k: statistics.median(r[0].get(k, 0.) for r in runs) for k in keys}, statistics.median(r[1] for r in runs)
    (f_ops, f_wall), (o_ops, o_wall) = med(run_forward), med(run_ours)
    extra = sorted(((o_ops.get(k, 0.) - f_ops.get(k, 0.), k) for k in set(f_ops) | set(o_ops)), reverse=True)
    rows = [[k, fmt(f_ops.get(k, 0.), 2), fmt(o_ops.get(k, 0.), 2), fmt(d, 2)] for d, k in extra[:top]]
    f_py, o_py = f_wall - sum(f_ops.values()), o_wall - sum(o_ops.values())
    rows.append(['(wall time not in any op: Python, hooks, profiler)', fmt(f_py, 2), fmt(o_py, 2), fmt(o_py - f_py, 2)])
    rows.append(['**total wall (profiled)**', fmt(f_wall, 1), fmt(o_wall, 1), fmt(o_wall - f_wall, 1)])
    return md_table(['op (self CPU time)', 'forward ms', 'lsuv_init ms', 'extra ms'], rows)

# ---- main
METHOD_NOTES = """\
* **forward**: `model.train()` then one `model(x)` under `torch.no_grad()` (the mode `lsuv_init` uses by default).
* **ours**: `lsuv_fastai.lsuv_init(model, x)` with its defaults (mean 0, std 1, tol 1e-3, no orthonormal pre-init,
  train mode).
* **peer**: `lsuv.lsuv_with_singlebatch(model, x, do_orthonorm=False, verbose=False)` from `lsuv` 0.3.0 (std tol 0.1,
  eval mode); orthonormal pre-init is off on both sides so that only the LSUV passes are timed. A peer run longer than
  {cap} s is stopped (SIGALRM) and counted as {cap} s: its cells then read ">=" (lower bounds).
* **Time**: every call gets a fresh `copy.deepcopy` of the model and a `gc.collect()` (both outside the timed region), so
  it starts with cold CPU caches, as a one-off call on a new model does: then each kind of torch operation and each
  Python function costs several times more at its first use than in a loop, which weighs on the small models. After one warm-up call,
  each repeat runs forward, ours, peer back to back; columns are medians over {reps} repeats (for the peer: at most
  {peer_reps}, and no new one once it has run {budget} s on the model), and each ratio is the median over repeats of
  the ratio of two calls made in the same repeat.
* **Peak memory** (measured after all timings): the kernel's peak resident set size (`VmHWM`, reset before every call
  through `/proc/self/clear_refs`) minus the resident size just before the call, i.e. the extra memory the call needed
  at its peak; median of {mem_reps} calls. glibc is first told (`mallopt`) to serve every block over 64 kB with mmap and
  to trim at once, so that freed tensors leave the resident set and cannot hide the next call's peak (this slows
  allocation, which is why the timings run before it). Where the peak is only a few MB (vit-tiny, the MLPs), ~1 MB
  differences are allocator noise and the ratio means little.
* `torch.set_flush_denormal(True)`: the deep MLPs (PyTorch default init) shrink activations towards float32 denormals,
  which would make the plain forward (but not the LSUV passes, whose activations are normalized) artificially slow.
* Wall times on a shared, small VM are noisy (other processes, CPU steal): trust the paired ratios more than the ms;
  "best runs" divides the fastest ours by the fastest forward. With 2 threads on 2 busy cores, OpenMP threads wait for
  each other (one resnet18 forward varied from 30 ms to 1.9 s here): on a loaded machine, run with `--threads 1`.
"""

def main(quick=False, profile=False, threads=None):
    start = time.perf_counter()
    cfg = QUICK if quick else FULL
    if threads or quick: torch.set_num_threads(threads or 1)  # a smoke test must not depend on the machine's load
    warnings.filterwarnings('ignore')  # e.g. "LSUV: 1 layer(s) output has no variance" (the ViT's zero-init head)
    torch.set_flush_denormal(True)
    header = machine_line()
    cases = model_cases(cfg)
    results, depth_results = {}, {}
    for name, case in cases.items():
        print(f'[{time.perf_counter() - start:4.0f}s] timing {name}', flush=True)
        results[name] = time_model(*case, cfg)
    for d in cfg['depths']:
        if f'mlp{d}' in results: depth_results[d] = results[f'mlp{d}']; continue
        print(f'[{time.perf_counter() - start:4.0f}s] timing mlp{d}', flush=True)
        depth_results[d] = time_model(lambda: mlp(d, cfg['mlp_width']), (cfg['mlp_batch'], cfg['mlp_width']), cfg)
    print(f'[{time.perf_counter() - start:4.0f}s] host reads', flush=True)
    reads = host_reads(cfg['depths'])
    ref = 'resnet50'
    need_profile = profile or (not quick and (results[ref]['ours_fwd'] or 0) > 1.5)  # issue: explain a miss
    breakdown = profile_breakdown(*cases[ref]) if need_profile else None
    release_freed_memory()
    memory = can_measure_memory()
    for name, case in cases.items():
        print(f'[{time.perf_counter() - start:4.0f}s] memory {name}', flush=True)
        results[name].update(memory_model(*case, cfg['mem_reps'], cfg['mem_warmups']) if memory
                             else dict(forward_mb=None, ours_mb=None, mem_ratio=None))

    RESULTS.mkdir(exist_ok=True)
    stem = 'speed_quick' if quick else 'speed'
    plot_depth(depth_results, RESULTS/f'{stem}.png')
    md = [f'# LSUV speed and memory benchmark{" (quick smoke test)" if quick else ""}', '', header, '',
          f'Code: {code_version()}, peer: lsuv {lsuv_version()}.', '',
          METHOD_NOTES.format(cap=cfg['peer_cap_s'], reps=cfg['reps'], peer_reps=cfg['peer_reps'],
                              budget=cfg['peer_budget_s'], mem_reps=cfg['mem_reps']),
          '## Targets', '', header, '', target_table(results, ref), '',
          '## Wall time', '', header, '', time_table(results), '',
          '## Peak extra memory', '', header, '',
          memory_table(results) if memory else '(not measured: /proc/self/clear_refs is not writable here)', '',
          f"## Depth scaling (plain MLP, width {cfg['mlp_width']}, batch {cfg['mlp_batch']})", '', header, '',
          depth_table(depth_results), '', f'![cost vs depth]({stem}.png)', '',
          '## Host reads per pass', '',
          'Reads of tensor values by the host (`.item()`, `.tolist()`, `bool()`, `float()`...) during one `lsuv_init` of a '
          'plain MLP, counted by wrapping those methods (`lsuv_fastai.test_utils.counting_host_reads`). On an accelerator '
          'each one waits for the device to finish its queue. On the CPU a read costs nothing, and the host path reads '
          'two numbers per layer; the device path, which `lsuv_init` takes on accelerators, reads a fixed number of '
          'times whatever the depth (the batch check, then one transfer at the end).', '', host_reads_table(reads), '']
    if breakdown:
        md += [f'## Where lsuv_init spends time beyond the forward ({ref}, torch.profiler)', '', header, '', breakdown, '']
    md.append(f'Total benchmark runtime: {time.perf_counter() - start:.0f} s; '
              f'load average at end: {os.getloadavg()[0]:.2f}.')
    text = '\n'.join(md) + '\n'
    (RESULTS/f'{stem}.md').write_text(text)
    print(text)

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='tiny sizes, 1 repeat, 1 thread: a smoke test (< 60 s)')
    p.add_argument('--profile', action='store_true', help='always add the torch.profiler breakdown on resnet50')
    p.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default, recorded in the header)')
    main(**vars(p.parse_args()))
