"""Training-quality study: does LSUV get the scale right without knowing the activation or the architecture?

fastai `Learner`, Adam + one-cycle (lr 2e-3, batch 64), the same budget for every init of a cell. Paired seeds: a
seed gives every init the same weights before its own init and the same batches in the same order, so the
difference between two inits is measured seed by seed (paired t interval). Models have no normalization.

    python bench/quality.py --fresh              # the full study (~22 min, ~29 with margin; below): quality.md/.png/.json
    python bench/quality.py --quick              # smoke test (about a minute): quality_quick.md/.png/.json
    python bench/quality.py --dry-run            # list the grid with run counts and estimated wall time
    python bench/quality.py --cells res1d-relu-12 --inits ours 'ours + blocks'   # a part: merged into quality.json
    python bench/quality.py --from-json          # rebuild quality.md/.png from quality.json without training
    python bench/quality.py --workers 1 --cells plain1d-grelu-20 --inits 'ours head=ce'   # a head rule of issue 18
      (study_lib.HEAD_RULES; the head study itself is bench/head_study.py, results in results/head.md)

Cells (kind-activation-depth): `plain1d` plain Conv1d on MNIST-1D (4000 train / 1000 test, length 40), depth =
weight layers; `res1d` residual Conv1d on MNIST-1D, depth = blocks (x + conv-act-conv, 2*blocks + 2 weight
layers); `plain2d` plain Conv2d on scikit-learn's 8x8 digits (1437 / 360). Activations: relu, grelu (the fastai
course's GeneralRelu: leaky_relu(x, 0.1) - 0.4), gelu, silu, tanh.

The grid (GRID below; 6 seeds each):
- plain1d depth 20, all 5 activations: 5 baselines (PyTorch default, Kaiming normal with ReLU gain, orthogonal with
  ReLU gain, lsuv 0.3.0) + ours = 5 inits;
- plain1d depths 8 and 32, ReLU and SiLU (with the ReLU gain SiLU shrinks the signal by ~0.7 per layer at unit
  scale, and more at small scale: the activation where a "ReLU" fixed init is most wrong with depth);
- res1d 4 and 12 blocks, ReLU: the 5 inits + two block-level LSUV variants (see `study_lib.INIT_CBS`);
- plain2d depth 12, ReLU (8 epochs: the training set is 2.8x smaller);
- our variants (mean=None, no head, ortho, n_batches=4, train=False) on plain1d depth 20 ReLU, depth 20
  GeneralRelu (the activation with a mean shift) and depth 32 ReLU (where ours lagged in the earlier 8-epoch study).

Time budget, measured on this machine (Xeon, 2 cores, 2 workers of one thread each, i.e. the seconds below are per
run while the other worker is busy), seconds per epoch at batch 64: plain1d depth 20: ReLU 1.30, GeneralRelu 1.45,
GELU 1.75, SiLU 1.80, tanh 1.25; depth 8: ReLU ~0.5, SiLU ~0.7; depth 32: ReLU 1.8, SiLU ~3.0; res1d ReLU 4
blocks 0.65, 12 blocks 1.55; plain2d depth 12 0.33; plus ~0.3 s per run (setup, the init, evaluation). With 4
epochs (8 for digits), per cell of 5 inits x 6 seeds = 30 runs:
  plain1d d20: (5.5 + 6.1 + 7.3 + 7.5 + 5.3) x 30 = 951 s; d8: (2.3 + 3.1) x 30 = 162 s; d32: (7.5 + 12.3) x 30 = 594 s
  res1d: (2.9 + 6.5) x 30 = 282 s, + 2 block variants x 6 seeds x (2.9 + 6.5) = 113 s; plain2d: 2.9 x 30 = 87 s
  variants: 4 trained x 6 seeds x (5.5 + 6.1 + 7.5) = 458 s (train=False: same weights as ours here, not retrained)
  total ~2650 worker-seconds / 2 workers = ~22 min; with 30% margin for the shared machine: ~29 min.
`--dry-run` prints an estimate for any selection (from `est_seconds`, the same numbers: 2530 s, 21 min for the full
grid). A busy machine stretches this: with another process using a full core, runs took 1.5-2.5x longer.
Runs are merged into the JSON by (cell, init, seed) unless `--fresh`, so a study cut short can be finished in parts. The earlier study (8 epochs, batch 32) reached 0.91-0.94 at
depth 20; 4 epochs at batch 64 (a quarter of the steps) reach ~0.7 and still separate the inits (one seed: Kaiming
0.75 vs ours 0.69 at depth 20 ReLU, 0.67 vs 0.77 at depth 32 SiLU, 0.20 vs 0.96 on the 16-block residual net).
"""
import argparse, json, math, statistics, sys, time
from multiprocessing import get_context
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_line, code_version, md_table
import study_lib as S

RESULTS = Path(__file__).parent/'results'
SEEDS = list(range(6))
BS, LR = 64, 2e-3
EPOCHS = {'plain1d': 4, 'res1d': 4, 'plain2d': 8}
COLLAPSE = 0.15  # final accuracy below this (chance: 0.10) counts as a collapsed run
MAIN = S.BASELINES + ['ours']
PLAIN_VARIANTS = ['ours mean=None', 'ours no head', 'ours ortho', 'ours n_batches=4', 'ours train=False']
BLOCK_VARIANTS = ['ours + blocks', 'ours blocks only']
# `ours no head` (the final classifier left at its own init) runs in every cell: the variants' first pass showed it
# clearly better with GeneralRelu, so it was a candidate default and needed evidence everywhere
GRID = ([(('plain1d', a, 20), MAIN + (PLAIN_VARIANTS if a in ('relu', 'grelu') else ['ours no head'])) for a in S.ACTS]
        + [(('plain1d', a, d), MAIN + (PLAIN_VARIANTS if (a, d) == ('relu', 32) else ['ours no head'])) for d in (8, 32) for a in ('relu', 'silu')]
        + [(('res1d', 'relu', b), MAIN + BLOCK_VARIANTS + ['ours no head']) for b in (4, 12)]
        + [(('plain2d', 'relu', 12), MAIN + ['ours no head'])])
QUICK_GRID = [(('plain1d', 'relu', 8), MAIN + ['ours train=False', 'ours no head']), (('plain1d', 'grelu', 8), MAIN),
              (('res1d', 'relu', 4), MAIN + BLOCK_VARIANTS), (('plain2d', 'relu', 12), ['pytorch default', 'kaiming normal', 'ours'])]
QUICK = dict(seeds=[0, 1], epochs={'plain1d': 2, 'res1d': 2, 'plain2d': 3})
# residual stream after init: (blocks, activation) x inits, mean over seeds
STREAM_NETS, STREAM_SEEDS = [(4, 'relu'), (12, 'relu'), (32, 'relu'), (12, 'silu')], [0, 1, 2]
STREAM_INITS = ['pytorch default', 'kaiming normal', 'lsuv 0.3.0', 'ours', 'ours + blocks', 'ours blocks only']

# ---- time estimate (seconds per epoch, 2 workers busy; see the docstring)
ACT_COST = {'relu': 1., 'grelu': 1.12, 'gelu': 1.35, 'silu': 1.4, 'tanh': 1.}
def est_seconds(cell, init, epochs):
    kind,act,depth = cell
    if kind == 'plain2d': per = 0.33 * depth/12
    elif kind == 'res1d': per = (0.1 + 0.12*depth) * ACT_COST[act]
    else: per = (0.5 + (depth - 8)*(0.8/12 if depth <= 20 else 0.5/12)) * ACT_COST[act] * (1.2 if depth > 20 and act != 'relu' else 1)
    return 0.3 if init in S.SAME_AS else 0.3 + per*epochs

# ---- running
def one_run(job):
    "Worker: one training run on one thread"
    torch.set_num_threads(1)
    key,init,seed,epochs,bs,lr = job
    t = time.time()
    r = S.train_run(S.parse_cell(key), init, seed, epochs, bs, lr)
    return dict(cell=key, init=init, seed=seed, epochs=epochs, bs=bs, lr=lr, wall_s=time.time() - t, **r)

def stream_job(job):
    torch.set_num_threads(1)
    (blocks, act), init, seeds = job
    return dict(blocks=blocks, act=act, init=init, seeds=seeds, **S.stream_profile(blocks, act, init, seeds, BS))

def plan(grid, seeds, epochs, cells=None, inits=None):
    "Jobs (cell key, init, seed, epochs, bs, lr) of `grid`, filtered by cell keys and init names, longest first"
    extra = [i for i in (inits or []) if i in S.HEAD_RULES]  # head rules (bench/head_study.py) run in any cell asked for
    jobs = [(S.cell_key(c), i, s, epochs[c[0]], BS, LR) for c,its in grid for i in its + [x for x in extra if x not in its]
            for s in seeds if (not cells or S.cell_key(c) in cells) and (not inits or i in inits)]
    return sorted(jobs, key=lambda j: -est_seconds(S.parse_cell(j[0]), j[1], j[3]))

def run_key(r): return (r['cell'], r['init'], r['seed'])

# ---- statistics and report
def mean_std(xs): return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}" if xs else '-'

def resolve(runs):
    "{(cell, init, seed): run} with `same_as` runs replaced by their partner's results (marked)"
    by = {run_key(r): r for r in runs}
    out = {}
    for k,r in by.items():
        if 'same_as' in r:
            p = by.get((r['cell'], r['same_as'], r['seed']))
            if p is None or 'acc' not in p: continue
            r = {**p, 'init': r['init'], 'copied_from': r['same_as'], 'init_s': r['init_s']}
        out[k] = r
    return out

def final(res, cell, init): return {s: r['acc'][-1] for (c,i,s),r in res.items() if c == cell and i == init}

def fmt_ci(m, lo, hi):
    return f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]" if not math.isnan(lo) else f"{m:+.3f} (one seed)"

def verdict(lo, hi, better='ours better', worse='ours worse'):
    if math.isnan(lo): return 'n/a'
    if lo == hi == 0: return 'identical'
    return better if lo > 0 else worse if hi < 0 else 'no clear difference'

def cells_in(res, grid):
    "Cell keys with results, in grid order, then any others"
    keys = [S.cell_key(c) for c,_ in grid]
    have = {c for c,_,_ in res}
    return [k for k in keys if k in have] + sorted(have - set(keys))

def inits_in(res, cell):
    have = {i for c,i,_ in res if c == cell}
    return [i for i in S.INITS if i in have]

def cell_table(res, cell):
    rows = []
    for init in inits_in(res, cell):
        rs = [r for (c,i,_),r in sorted(res.items()) if c == cell and i == init]
        acc = [r['acc'][-1] for r in rs]
        note = ' (same initial weights as ours: its runs)' if any('copied_from' in r for r in rs) else ''
        rows.append([init + note, mean_std([r['acc'][0] for r in rs]), mean_std(acc), f"{sum(a < COLLAPSE for a in acc)}/{len(acc)}",
                     f"{1e3*statistics.median(r['init_s'] for r in rs):.1f}", len(rs)])
    return md_table(['init', 'accuracy after epoch 1', 'final accuracy', 'collapsed', 'init ms (median)', 'seeds'], rows)

def best_other(res, cell):
    "The baseline with the best mean final accuracy in `cell` (None if none ran)"
    means = {i: statistics.mean(v.values()) for i in S.BASELINES if (v := final(res, cell, i))}
    return max(means, key=means.get) if means else None

def paired(res, cell, a, b):
    fa,fb = final(res, cell, a), final(res, cell, b)
    seeds = sorted(set(fa) & set(fb))
    if not seeds: return None
    return (*S.paired_ci([fa[s] for s in seeds], [fb[s] for s in seeds]), len(seeds))

def diff_rows(res, grid):
    "Rows: ours - best other init per cell; and each variant - ours"
    main,var = [],[]
    for cell in cells_in(res, grid):
        name = S.cell_name(S.parse_cell(cell))
        b = best_other(res, cell)
        if b and (p := paired(res, cell, 'ours', b)):
            m,lo,hi,n = p
            main.append(dict(cell=cell, name=name, best=b, m=m, lo=lo, hi=hi, n=n, verdict=verdict(lo, hi)))
        for v in S.VARIANTS:
            if (p := paired(res, cell, v, 'ours')):
                m,lo,hi,n = p
                var.append(dict(cell=cell, name=name, variant=v, m=m, lo=lo, hi=hi, n=n,
                                verdict=verdict(lo, hi, 'variant better', 'variant worse')))
    return main, var

FIXED = ['pytorch default', 'kaiming normal', 'orthogonal']

def target_table(res, grid):
    "The issue's targets per cell: ours against the best fixed init and against lsuv 0.3.0 (paired), and collapses"
    rows = []
    for cell in cells_in(res, grid):
        means = {i: statistics.mean(v.values()) for i in FIXED if (v := final(res, cell, i))}
        if not means or not final(res, cell, 'ours'): continue
        bf = max(means, key=means.get)
        cols = []
        for other in (bf, 'lsuv 0.3.0'):
            p = paired(res, cell, 'ours', other)
            cols += [fmt_ci(*p[:3]) + f" ({verdict(p[1], p[2], 'better', 'worse')})" if p else '-']
        coll = lambda i: f"{sum(a < COLLAPSE for a in final(res, cell, i).values())}/{len(final(res, cell, i))}" if final(res, cell, i) else '-'
        rows.append([S.cell_name(S.parse_cell(cell)), bf, cols[0], cols[1], coll('ours'), coll('kaiming normal')])
    return md_table(['cell', 'best fixed init', 'ours - best fixed [95% CI]', 'ours - lsuv 0.3.0 [95% CI]',
                     'ours collapsed', 'kaiming collapsed'], rows)

def collapse_table(res, grid):
    cells = cells_in(res, grid)
    inits = [i for i in S.INITS if any(i == j for _,j,_ in res)]
    rows = []
    for cell in cells:
        row = [S.cell_name(S.parse_cell(cell))]
        for i in inits:
            acc = list(final(res, cell, i).values())
            row.append(f"{sum(a < COLLAPSE for a in acc)}/{len(acc)}" if acc else '')
        rows.append(row)
    return md_table(['cell', *inits], rows)

def summary(res, grid, main, var):
    "Plain-words summary, generated from the numbers"
    out = []
    groups = {k: [d for d in main if d['verdict'] == k] for k in ('ours better', 'no clear difference', 'ours worse', 'n/a')}
    lst = lambda ds: '; '.join(f"{d['name']} ({d['m']:+.3f} vs {d['best']})" for d in ds) or 'none'
    out.append(f"- Ours (`LSUVCallback()`, default settings) against the best other init of each cell (paired over "
               f"seeds, 95% CI): **better** in {len(groups['ours better'])} of {len(main)} cells: {lst(groups['ours better'])}.")
    out.append(f"- **No clear difference** in {len(groups['no clear difference'])}: {lst(groups['no clear difference'])}.")
    out.append(f"- **Worse** in {len(groups['ours worse'])}: {lst(groups['ours worse'])}.")
    coll = []
    for cell in cells_in(res, grid):
        for i in inits_in(res, cell):
            acc = list(final(res, cell, i).values())
            if (k := sum(a < COLLAPSE for a in acc)): coll.append((i, f"{i} {k}/{len(acc)} in {S.cell_name(S.parse_cell(cell))}"))
    out.append(f"- Collapsed runs (final accuracy < {COLLAPSE}): " + ('; '.join(c for _,c in coll) if coll else 'none') + '.'
               + (' No run of ours (default settings) collapsed.' if 'ours' not in {i for i,_ in coll} and any(i == 'ours' for _,i,_ in res) else ''))
    for v in S.VARIANTS:
        ds = [d for d in var if d['variant'] == v]
        if ds: out.append(f"- `{v}` vs ours: " + '; '.join(f"{d['name']}: {d['m']:+.3f} ({d['verdict']})" for d in ds) + '.')
    return '\n'.join(out)

def stream_section(streams):
    if not streams: return ''
    nets = sorted({(s['blocks'], s['act']) for s in streams}, key=lambda t: (t[1] != 'relu', t[0]))
    out = []
    for blocks,act in nets:
        ss = {s['init']: s for s in streams if (s['blocks'], s['act']) == (blocks, act)}
        idx = sorted({0, 1, 2, 4, blocks//2, blocks - 1, blocks} & set(range(blocks + 1)))
        rows = [[i] + [f"{ss[i]['stream'][k]:.3g}" for k in idx] + [f"{ss[i]['logits']:.3g}"] for i in STREAM_INITS if i in ss]
        out.append(f"**{S.ACT_NAMES[act]}, {blocks} blocks** (seeds {next(iter(ss.values()))['seeds']})\n\n"
                   + md_table(['init', *[('stem' if k == 0 else f'after block {k}') for k in idx], 'logits'], rows))
    return '\n\n'.join(out)

def warnings_section(res):
    ws = {}
    for (c,i,_),r in res.items():
        for w in r.get('warnings', []): ws.setdefault((c, i, w), 0); ws[(c, i, w)] += 1
    if not ws: return 'No LSUV warnings in any run.'
    return '\n'.join(f"- {S.cell_name(S.parse_cell(c))}, {i}: {n}x `{w}`" for (c,i,w),n in sorted(ws.items()))

COLOR = {i: f'C{k}' for k,i in enumerate(MAIN + BLOCK_VARIANTS + ['ours no head'])}

def plot(res, grid, streams, path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cells = cells_in(res, grid)
    inits = [i for i in MAIN + ['ours no head'] + BLOCK_VARIANTS if any(i == j for _,j,_ in res)]
    fig,axs = plt.subplots(2, 1, figsize=(12, 8), gridspec_kw=dict(height_ratios=[3, 2]))
    ax,w,labelled = axs[0], 0.8/max(len(inits), 1), set()
    for k,init in enumerate(inits):
        for x,cell in enumerate(cells):
            acc = list(final(res, cell, init).values())
            if not acc: continue
            xs = [x - 0.4 + w*(k + .5)]*len(acc)
            ax.scatter(xs, acc, s=8, color=COLOR.get(init, "k"), alpha=.5, label=None if init in labelled else init); labelled.add(init)
            ax.hlines(statistics.mean(acc), xs[0] - w/2, xs[0] + w/2, color=COLOR.get(init, "k"))
    ax.set_xticks(range(len(cells)), [c.replace('plain', 'p').replace('-', '\n', 1) for c in cells], fontsize=7)
    ax.axhline(COLLAPSE, color='grey', lw=.5, ls=':'); ax.set_ylabel('final test accuracy'); ax.grid(alpha=.3, axis='y')
    ax.legend(fontsize=7, ncol=4); ax.set_title('final accuracy per seed (dots) and mean (bars)', fontsize=9)
    ax = axs[1]
    if streams:
        blocks = max(s['blocks'] for s in streams if s['act'] == 'relu')
        ss = {s['init']: s for s in streams if (s['blocks'], s['act']) == (blocks, 'relu')}
        for init in [i for i in S.INITS if i in ss]:
            ax.plot(range(len(ss[init]['stream'])), ss[init]['stream'], 'o-', ms=3, color=COLOR.get(init), label=init)
        ax.set_yscale('log'); ax.set_xlabel('block (0: stem output)'); ax.set_ylabel('std of the residual stream')
        ax.set_title(f'residual stream after init, ReLU, {blocks} blocks', fontsize=9); ax.legend(fontsize=7, ncol=3); ax.grid(alpha=.3)
    fig.tight_layout(); fig.savefig(path, dpi=80); plt.close(fig)

def _compute_line(runs, cfg)->str:
    "The training time of all the runs in the JSON (they may come from several invocations)"
    w = cfg.get('workers', 2) or 2
    mins = sum(r.get('wall_s', 0) for r in runs) / 60
    return f"{len(runs)} runs: {mins:.0f} worker-minutes of training, about {mins/w:.0f} min on {w} workers (one thread each)."

def report(data, grid, suffix, minutes=None):
    res = resolve(data['runs'])
    main, var = diff_rows(res, grid)
    cfg = data['config']
    cells = cells_in(res, grid)
    eps = {}
    for r in res.values(): eps.setdefault(S.parse_cell(r['cell'])[0], set()).add(r['epochs'])
    eps = ', '.join(f"{k}: {'/'.join(map(str, sorted(v)))}" for k,v in sorted(eps.items()))
    seeds = sorted({s for _,_,s in res})
    md = [f"# Training quality: does LSUV need to know the activation or the architecture?\n\n{data.get('machine') or machine_line()}\n\n"
          f"Code: {data.get('code', '?')} (this report built with {code_version()}).",
          "## Method\n\n"
          f"fastai `Learner`, Adam + one-cycle (lr {cfg['lr']}, batch {cfg['bs']}), epochs ({eps}; per cell in its "
          f"heading), the same budget for every init of a cell. Paired seeds ({seeds}): a seed gives every init the same "
          "initial weights before its own init and the same batches in the same order. No normalization layers. "
          "Inits: PyTorch default; Kaiming normal and orthogonal with the ReLU gain (what a user would pick) and zero "
          "biases; `lsuv 0.3.0` (PyPI, by the paper's author: orthonormal pre-init, std only, eval mode); ours = "
          "`LSUVCallback()` (unit std and zero mean of every Linear/Conv output, one training batch); variants of ours: "
          "`mean=None` (std only), `no head` (`modules=lambda m: lsuv_layers(m)[:-1]`), `ortho=True`, `n_batches=4`, "
          "`train=False` (these nets have no dropout/BatchNorm, so its initial weights are checked against ours and, "
          f"when equal, not retrained); residual nets only: `ours + blocks` (ours, then a second "
          f"`LSUVCallback(modules=branches, std={S.BLOCK_STD})` sets what each block adds to std {S.BLOCK_STD}) and "
          f"`ours blocks only` (just the second one; stem, inner convs and head keep PyTorch's default). Collapse: final "
          f"test accuracy < {COLLAPSE} (10 classes). Paired difference: mean over seeds of (ours - the best other init "
          "by mean final accuracy among the 4 baselines), 95% paired t interval (df = seeds - 1). "
          + _compute_line(data['runs'], cfg),
          "## Grid and why\n\n" + ("This is the `--quick` smoke test (a few small cells, 2 seeds, 2-3 epochs): "
                                     "the full study's grid is:\n\n" if suffix else '') + GRID_WHY,
          "## Summary\n\n" + summary(res, grid, main, var) + ('\n\n' + SUMMARY_NOTES if suffix == '' else ''),
          "## Targets\n\nOurs (default settings) against the best fixed init of each cell (PyTorch default, Kaiming, "
          "orthogonal) and against `lsuv` 0.3.0, paired over seeds, and how often ours and Kaiming collapsed.\n\n"
          + target_table(res, grid),
          "## Ours vs the best other init (final test accuracy, paired)\n\n"
          + md_table(['cell', 'best other init', 'ours - best [95% CI]', 'seeds', 'verdict'],
                     [[d['name'], d['best'], fmt_ci(d['m'], d['lo'], d['hi']), d['n'], d['verdict']] for d in main])]
    if var: md.append("## Variants of ours vs ours (paired)\n\n"
                      + md_table(['cell', 'variant', 'variant - ours [95% CI]', 'seeds', 'verdict'],
                                 [[d['name'], d['variant'], fmt_ci(d['m'], d['lo'], d['hi']), d['n'], d['verdict']] for d in var]))
    md.append("## Collapse rate (runs ending below {:.2f})\n\n{}".format(COLLAPSE, collapse_table(res, grid)))
    ep_of = lambda c: '/'.join(map(str, sorted({r['epochs'] for k,r in res.items() if k[0] == c})))
    md.append("## Per cell\n\n" + '\n\n'.join(f"**{S.cell_name(S.parse_cell(c))}** ({ep_of(c)} epochs)\n\n{cell_table(res, c)}" for c in cells))
    if data.get('streams'):
        md.append("## Residual stream after init\n\nStd of the residual stream (train mode, the first training batch of "
                  "64) after the stem and after each block, and of the logits, right after the init, before training; "
                  "mean over seeds. Average pooling by 2 after 1/3 and 2/3 of the blocks.\n\n" + stream_section(data['streams'])
                  + ('\n\n' + STREAM_NOTES if suffix == '' else ''))
    md.append("## LSUV warnings\n\n" + warnings_section(res))
    md.append(f"![final accuracy per cell and residual stream](quality{suffix}.png)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS/f'quality{suffix}.md').write_text('\n\n'.join(md) + '\n')
    plot(res, grid, data.get('streams'), RESULTS/f'quality{suffix}.png')
    return '\n\n'.join(md)

GRID_WHY = """\
- **Activations at depth 20** (plain Conv1d, MNIST-1D): all five, as LSUV's claim is that it needs no knowledge of
  the activation. Depth 20 is where PyTorch's default init already fails with ReLU and the fixed inits still work.
- **Depth 8 and 32 only for ReLU and SiLU**: ReLU is what the fixed inits are tuned for; SiLU is where the ReLU gain is
  most wrong (with Kaiming's ReLU gain the second moment of SiLU's output shrinks the signal by about 0.7 per layer
  at unit scale, 0.54 at small scale: it vanishes with depth; GELU shrinks less, tanh and GeneralRelu have a fixed
  point). Depth 32 costs about 1.5-2x depth 20 per run, so only two activations there.
- **Residual Conv1d, 4 and 12 blocks, ReLU**: blocks `x + conv(act(conv(x)))`, no normalization. Fixed inits
  that preserve variance per layer make each block multiply the stream's variance (Kaiming: about 3x per block),
  so this is where an architecture-blind init should matter most; two block-level variants test whether
  normalizing what each block adds (smaller std) is better than per-layer unit variance.
- **8x8 digits, plain Conv2d depth 12, ReLU**: a second dataset and 2-D convs; cheap, one activation.
- **Variants of ours** on depth 20 ReLU, depth 20 GeneralRelu (mean shift: tests `mean=None`) and depth 32 ReLU
  (where ours lagged in the earlier 8-epoch study).
- **Budget**: 4 epochs at batch 64 (8 for digits), 6 seeds, to fit ~30 minutes on 2 cores (arithmetic in
  `bench/quality.py`'s docstring). Shorter training makes init differences larger, not smaller; accuracies are
  therefore lower than with 8 epochs at batch 32 (~0.7 instead of ~0.92 at depth 20)."""

SUMMARY_NOTES = """\
**Reading.** On these nets LSUV does what it promises where a fixed init is the wrong size: it never collapsed (Kaiming
did in 4 of 12 depth-32 runs, orthogonal in 6, `lsuv` 0.3.0 in 2), it trains residual nets without normalization far
better than any fixed init (Kaiming's stream grows about 3x per block), and elsewhere it is as good as the best fixed
init within the paired interval, with one exception: GeneralRelu, where Kaiming (whose gain happens to suit it) is
0.11 better. It is not clearly better than a well-chosen fixed init on plain nets; with tanh it is clearly better than
`lsuv` 0.3.0 (+0.15) but, with 4 epochs, not than Kaiming or orthogonal (the advantage seen with 8 epochs does not
show). Against `lsuv` 0.3.0 it is within the interval in 9 cells, better in 2, and 0.023 worse with SiLU at depth 20. At depth 32 every init is unstable at this budget (wide intervals): only the collapse
counts separate them.

**Defaults, decided on these numbers: unchanged** (mean 0 and std 1 for every Linear/Conv output, one training batch,
train mode, no orthonormal pre-init), because no variant is better in every cell where it was tried:
- `mean=None`, `ortho=True`: never better, in the 3 cells tried.
- `n_batches=4`: never clearly better, at 4 times the cost.
- `train=False`: the same weights on these nets (no dropout or BatchNorm).
- Leaving the classifier at its own init (`no head`, tried in every cell): clearly better with GeneralRelu and with
  SiLU at depth 32, clearly worse with tanh, no clear difference in the 9 other cells. The head's logit scale at
  init matters, and which is better depends on the activation: so it stays an option,
  `LSUVCallback(modules=lambda m: lsuv_layers(m)[:-1])`, not the default. With GeneralRelu it closes most of the gap
  to Kaiming (see the targets table and `ours no head` in the GeneralRelu cell).
- Block-level targets on residual nets (what each block adds at std 0.2): worse than per-layer LSUV at both depths:
  the stream's growth with depth (about sqrt(blocks + 1)) does not hurt here."""
STREAM_NOTES = """\
With per-layer LSUV every branch's output has unit variance, so the stream's variance grows by about 1 per block
(std about sqrt(blocks + 1), less after each pooling); with Kaiming (ReLU gain) each block roughly multiplies it by
3, so its std grows exponentially with depth. `ours + blocks` and `ours blocks only` keep what each block adds at
std 0.2, so the stream stays near the stem's scale."""

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='smoke test: 4 small cells, 2 seeds, 2-3 epochs; writes *_quick.*')
    p.add_argument('--workers', type=int, default=2, help='runs in parallel, one thread each')
    p.add_argument('--cells', nargs='+', metavar='CELL', help='only these cells, e.g. plain1d-relu-20 res1d-relu-12')
    p.add_argument('--inits', nargs='+', metavar='INIT', choices=S.INITS, help=f'only these inits, from: {S.INITS}')
    p.add_argument('--seeds', type=int, help=f'number of seeds (default {len(SEEDS)}; quick: {len(QUICK["seeds"])})')
    p.add_argument('--epochs', type=int, help=f'epochs for every dataset (default {EPOCHS}; quick: {QUICK["epochs"]})')
    p.add_argument('--fresh', action='store_true', help='discard the runs already in the JSON (default: merge into it)')
    p.add_argument('--no-streams', action='store_true', help='skip the residual-stream measurement')
    p.add_argument('--from-json', action='store_true', help='only rebuild the report and plot from the JSON')
    p.add_argument('--dry-run', action='store_true', help='print the jobs and the estimated wall time, run nothing')
    a = p.parse_args()
    grid, seeds, epochs = (QUICK_GRID, QUICK['seeds'], QUICK['epochs']) if a.quick else (GRID, SEEDS, EPOCHS)
    if a.seeds: seeds = list(range(a.seeds))
    if a.epochs: epochs = {k: a.epochs for k in epochs}
    suffix = '_quick' if a.quick else ''
    jpath = RESULTS/f'quality{suffix}.json'
    known = {S.cell_key(c) for c,_ in grid}
    if a.cells and (bad := set(a.cells) - known):
        try: [S.build(S.parse_cell(c)) for c in bad]  # a valid cell outside the grid: run it with every main init
        except Exception: p.error(f"unknown cell(s) {sorted(bad)}; grid cells: {sorted(known)}")
        full = {S.cell_key(c): its for c,its in GRID}  # inits as in the full grid, else the main ones
        grid = grid + [(S.parse_cell(c), full.get(c, MAIN + (BLOCK_VARIANTS if c.startswith('res1d') else []))) for c in sorted(bad)]
    old = json.loads(jpath.read_text()) if jpath.exists() and not a.fresh else None
    if a.from_json:
        if old is None: p.error(f'{jpath} not found')
        print(report(old, grid, suffix)); return
    jobs = plan(grid, seeds, epochs, a.cells, a.inits)
    est = sum(est_seconds(S.parse_cell(j[0]), j[1], j[3]) for j in jobs)
    print(f"{len(jobs)} runs, estimated {est:.0f} worker-seconds = {est/a.workers/60:.1f} min on {a.workers} workers "
          f"(+30% margin: {1.3*est/a.workers/60:.1f} min)", flush=True)
    if a.dry_run:
        from collections import Counter
        for (c,i),n in Counter((j[0], j[1]) for j in jobs).items(): print(f"  {c:18} {i:18} x{n}")
        return
    for c in {S.parse_cell(j[0]) for j in jobs}: S.cell_data(c)  # generate the data once, before forking
    streams_todo = [] if a.no_streams or (a.cells and not any(c.startswith('res1d') for c in a.cells)) else \
        [(n, i, STREAM_SEEDS[:1] if a.quick else STREAM_SEEDS) for n in (STREAM_NETS[:2] if a.quick else STREAM_NETS)
         for i in STREAM_INITS]
    start, runs, streams = time.time(), [], []
    with get_context('fork').Pool(a.workers) as pool:
        for k,r in enumerate(pool.imap_unordered(one_run, jobs), 1):
            runs.append(r)
            acc = f"{r['acc'][-1]:.3f}" if 'acc' in r else f"same weights as {r['same_as']}"
            print(f"[{k}/{len(jobs)} {(time.time() - start)/60:.1f} min] {r['cell']} {r['init']} seed {r['seed']}: "
                  f"{acc} ({r['wall_s']:.1f}s)", flush=True)
        streams = list(pool.imap_unordered(stream_job, streams_todo))
    minutes = (time.time() - start) / 60
    merged = {run_key(r): r for r in (old['runs'] if old else [])}
    merged.update({run_key(r): r for r in runs})
    old_streams = {(s['blocks'], s['act'], s['init']): s for s in (old.get('streams', []) if old else [])}
    old_streams.update({(s['blocks'], s['act'], s['init']): s for s in streams})
    data = dict(config=dict(lr=LR, bs=BS, epochs=epochs, seeds=seeds, workers=a.workers, collapse=COLLAPSE),
                code=code_version(), machine=machine_line(), runs=list(merged.values()), streams=list(old_streams.values()))
    RESULTS.mkdir(exist_ok=True)
    jpath.write_text(json.dumps(data, indent=1))
    print(report(data, grid, suffix, minutes))

if __name__ == '__main__': main()
