"""Does LSUV make deep plain nets train? fastai Learner, Adam + one-cycle, the same seeds and batch order for every
init; test accuracy after epoch 1 and at the end (mean ± std over seeds) and the init's own wall time.
Writes bench/results/quality.md and quality.png. Run: python bench/quality.py [--quick]"""
import argparse, os, statistics, sys, time
from multiprocessing import get_context
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_line, md_table
from lsuv_fastai.demo import INITS, train_run, mnist1d_data, digits_data

RESULTS = Path(__file__).parent/'results'
# (title, data, ndim, depth)
TASKS = [('MNIST-1D, Conv1d', 'mnist1d', 1, 8), ('MNIST-1D, Conv1d', 'mnist1d', 1, 20),
         ('MNIST-1D, Conv1d', 'mnist1d', 1, 32), ('8x8 digits, Conv2d', 'digits', 2, 12)]
DATA = {'mnist1d': mnist1d_data, 'digits': digits_data}

def one_run(job):
    "Worker: one training run on one thread; returns (job, accuracies per epoch, init seconds)"
    torch.set_num_threads(1)
    (title, data, ndim, depth), init, seed, epochs = job
    r = train_run(init, DATA[data](), depth=depth, ndim=ndim, epochs=epochs, seed=seed)
    return job, r['acc'], r['init_s']

def mean_std(xs): return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}"

def task_name(task): return f"{task[0]}, depth {task[3]}"

def tables(results, tasks, inits):
    "Markdown: one table per task, a row per init"
    out = []
    for task in tasks:
        rows = []
        for init in inits:
            rs = [r for (t, i, _, _), r in results.items() if t == task and i == init]
            rows.append([init, mean_std([a[0] for a, _ in rs]), mean_std([a[-1] for a, _ in rs]),
                         f"{1e3*statistics.median(s for _, s in rs):.1f}"])
        out.append(f"**{task_name(task)}**\n\n" + md_table(['init', 'accuracy after epoch 1', 'final accuracy', 'init time (ms, median)'], rows))
    return '\n\n'.join(out)

def final_accs(results, task, init): return [a[-1] for (t, i, _, _), (a, _) in results.items() if t == task and i == init]

def targets(results, task):
    "PASS/FAIL lines for the issue's target at depth 20"
    ours, peer, dflt = (statistics.mean(final_accs(results, task, i)) for i in ('ours', 'lsuv 0.3.0', 'pytorch default'))
    chk = lambda ok: 'PASS' if ok else 'FAIL'
    return '\n'.join([f"- ours reaches >= 0.90 final accuracy at depth 20: {ours:.3f} ({chk(ours >= 0.90)})",
                      f"- ours at least the peer (lsuv 0.3.0): {ours:.3f} vs {peer:.3f} ({chk(ours >= peer)})",
                      f"- PyTorch default far below: {dflt:.3f} ({chk(dflt < ours - 0.3)})"])

def plot(results, tasks, inits, path):
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(1, len(tasks), figsize=(5*len(tasks), 4), squeeze=False)
    for ax, task in zip(axs[0], tasks):
        for init in inits:
            accs = torch.tensor([a for (t, i, _, _), (a, _) in results.items() if t == task and i == init])
            m, s = accs.mean(0), (accs.std(0) if len(accs) > 1 else torch.zeros(accs.shape[1]))
            ep = range(1, accs.shape[1] + 1)
            ax.plot(ep, m, 'o-', ms=3, label=init); ax.fill_between(ep, m - s, m + s, alpha=.15)
        ax.set_title(task_name(task)); ax.set_xlabel('epoch'); ax.set_ylabel('test accuracy'); ax.grid(alpha=.3)
    axs[0, 0].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path, dpi=90)

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--quick', action='store_true', help='smoke test: depth 8 only, 1 seed, 2 epochs, 2 inits')
    p.add_argument('--workers', type=int, default=2, help='runs in parallel, one thread each')
    a = p.parse_args()
    tasks, inits, seeds, epochs = (TASKS[:1], ['pytorch default', 'ours'], [0], 2) if a.quick else (TASKS, INITS, [0, 1, 2], 8)
    jobs = [(t, i, s, epochs) for t in tasks for i in inits for s in seeds]
    for d in {t[1] for t in tasks}: DATA[d]()  # generate once, before forking
    start = time.time()
    with get_context('fork').Pool(a.workers) as pool:
        results = {job: (acc, secs) for job, acc, secs in pool.imap_unordered(one_run, jobs)}
    minutes = (time.time() - start) / 60
    suffix = '_quick' if a.quick else ''
    md = [f"# Training quality\n\n{machine_line()}\n",
          f"Plain ReLU convnets without normalization, fastai `Learner`, Adam + one-cycle (lr 2e-3, batch 32), {epochs} epochs, "
          f"seeds {seeds}: mean ± std of test accuracy. The same seed gives every init the same initial weights before "
          f"it runs and the same batches in the same order. Init time: the init call alone (for ours, `lsuv_init` inside "
          f"the callback), {a.workers} runs in parallel on one thread each. {len(jobs)} runs in {minutes:.1f} min.\n",
          tables(results, tasks, inits)]
    if not a.quick: md.append("**Target (depth 20, MNIST-1D)**\n\n" + targets(results, TASKS[1]))
    md.append(f"![accuracy curves](quality{suffix}.png)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS/f'quality{suffix}.md').write_text('\n\n'.join(md) + '\n')
    plot(results, tasks, inits, RESULTS/f'quality{suffix}.png')
    print('\n\n'.join(md))

if __name__ == '__main__': main()
