"""Models, inits, one training run and the statistics for `bench/quality.py` (the training-quality study).

Models: plain Conv1d/Conv2d nets as `lsuv_fastai.demo.plain_convnet` but with any activation, and a residual Conv1d
net without normalization (blocks `x + branch(x)`, branch = conv-act-conv). Inits: the demo's fixed inits and the
`lsuv` package, our `LSUVCallback` with default settings and its variants."""
from __future__ import annotations
import hashlib, io, math, statistics, time, warnings
from contextlib import redirect_stdout
import torch
from torch import nn
import torch.nn.functional as F
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from fastai.callback.progress import ProgressCallback  # noqa: F401  (Learner.no_bar)
from fastai.callback.schedule import ParamScheduler  # noqa: F401  (Learner.fit_one_cycle)
from lsuv_fastai.core import lsuv_layers
from lsuv_fastai.utils import preserved_rng
from lsuv_fastai.callback import LSUVCallback, training_batch
from lsuv_fastai.demo import mnist1d_data, digits_data, make_dls, kaiming_init, orthogonal_init, peer_lsuv_init

# ---- activations
class GeneralRelu(nn.Module):
    "The fastai course's GeneralRelu: leaky_relu(x, leak) - sub"
    def __init__(self, leak=0.1, sub=0.4): super().__init__(); self.leak,self.sub = leak,sub
    def forward(self, x): return F.leaky_relu(x, self.leak) - self.sub

ACTS = {'relu': nn.ReLU, 'grelu': GeneralRelu, 'gelu': nn.GELU, 'silu': nn.SiLU, 'tanh': nn.Tanh}
ACT_NAMES = {'relu': 'ReLU', 'grelu': 'GeneralRelu(0.1, 0.4)', 'gelu': 'GELU', 'silu': 'SiLU', 'tanh': 'tanh'}

# ---- models
def plain_net(depth:int, ndim:int=1, act:str='relu', width:int=32, n_out:int=10)->nn.Sequential:
    "`lsuv_fastai.demo.plain_convnet` with activation `act`: `depth-1` convs (stride 2 at 1/3 and 2/3 depth) + Linear"
    conv,size,ks = (nn.Conv1d, 40, 5) if ndim == 1 else (nn.Conv2d, 8, 3)
    layers,ni = [],1
    for i in range(depth - 1):
        stride = 2 if i in (depth//3, 2*depth//3) and size > 2 else 1
        layers += [conv(ni, width, ks, padding=ks//2, stride=stride), ACTS[act]()]
        ni,size = width, (size - 1)//stride + 1
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size**ndim, n_out))

class Branch(nn.Module):
    "conv-act-conv; `weight`/`bias` expose the last conv's, so LSUV can target the whole branch (re-run path)"
    def __init__(self, width, act, ks=5):
        super().__init__()
        self.conv1,self.act,self.conv2 = nn.Conv1d(width, width, ks, padding=ks//2), ACTS[act](), nn.Conv1d(width, width, ks, padding=ks//2)
    def forward(self, x): return self.conv2(self.act(self.conv1(x)))
    @property
    def weight(self): return self.conv2.weight
    @property
    def bias(self): return self.conv2.bias

class ResBlock(nn.Module):
    def __init__(self, width, act): super().__init__(); self.branch = Branch(width, act)
    def forward(self, x): return x + self.branch(x)

def res_net(blocks:int, act:str='relu', width:int=32, n_out:int=10)->nn.Sequential:
    """Residual Conv1d net without normalization for MNIST-1D (length 40): stem conv, `blocks` residual blocks
    (average pooling by 2 after 1/3 and 2/3 of them, so the stream is never cut), act, Flatten, Linear.
    Weight layers: 2*blocks + 2"""
    layers,size = [nn.Conv1d(1, width, 5, padding=2)],40
    for i in range(blocks):
        if i in (blocks//3, 2*blocks//3) and i > 0: layers.append(nn.AvgPool1d(2)); size //= 2
        layers.append(ResBlock(width, act))
    return nn.Sequential(*layers, ACTS[act](), nn.Flatten(), nn.Linear(width*size, n_out))

def branches(model)->list: return [m for m in model.modules() if isinstance(m, Branch)]

# A cell: (kind, act, depth). kind 'plain1d' (MNIST-1D, depth = weight layers), 'res1d' (MNIST-1D, depth = blocks),
# 'plain2d' (8x8 digits, depth = weight layers)
def cell_name(cell)->str:
    kind,act,depth = cell
    if kind == 'res1d': return f"MNIST-1D, residual Conv1d, {depth} blocks ({2*depth+2} weight layers), {ACT_NAMES[act]}"
    return f"{'MNIST-1D, plain Conv1d' if kind == 'plain1d' else '8x8 digits, plain Conv2d'}, depth {depth}, {ACT_NAMES[act]}"

def cell_key(cell)->str: return '{}-{}-{}'.format(*cell)
def parse_cell(key:str)->tuple: kind,act,depth = key.split('-'); return kind, act, int(depth)

def build(cell)->nn.Module:
    kind,act,depth = cell
    return res_net(depth, act) if kind == 'res1d' else plain_net(depth, 2 if kind == 'plain2d' else 1, act)

def cell_data(cell)->tuple: return digits_data() if cell[0] == 'plain2d' else mnist1d_data()

# ---- inits: a function (model, xb) run before training, or LSUVCallback settings
INIT_FNS = {'pytorch default': None, 'kaiming normal': kaiming_init, 'orthogonal': orthogonal_init, 'lsuv 0.3.0': peer_lsuv_init}
BLOCK_STD = 0.2  # target std of each residual branch's output for the block-level variant
INIT_CBS = {'ours': {},
            'ours mean=None': dict(mean=None),
            'ours no head': dict(modules=lambda m: lsuv_layers(m)[:-1]),
            'ours ortho': dict(ortho=True),
            'ours n_batches=4': dict(n_batches=4),
            'ours train=False': dict(train=False),
            # residual nets only: per-layer LSUV, then each branch's output (what a block adds) to std BLOCK_STD
            'ours + blocks': [{}, dict(modules=branches, std=BLOCK_STD)],
            # residual nets only: only each branch's output, to std BLOCK_STD (stem, inner convs and head: PyTorch default)
            'ours blocks only': dict(modules=branches, std=BLOCK_STD)}
# Variants that may give exactly the weights of another init (models without dropout/BatchNorm: train=False changes
# nothing). The worker checks the initial weights and trains only if they differ.
SAME_AS = {'ours train=False': 'ours'}
BASELINES = list(INIT_FNS)
VARIANTS = [k for k in INIT_CBS if k != 'ours']
INITS = BASELINES + list(INIT_CBS)

def make_cbs(init):
    s = INIT_CBS[init]
    return [LSUVCallback(**kw) for kw in (s if isinstance(s, list) else [s])]

def weights_digest(model)->str:
    h = hashlib.sha1()
    for p in model.parameters(): h.update(p.detach().numpy().tobytes())
    return h.hexdigest()[:12]

def setup(cell, init, seed, bs):
    "Learner for `cell` with `init` set up (not yet applied for callbacks) after `set_seed(seed)`: (learn, cbs)"
    set_seed(seed)
    dls = make_dls(cell_data(cell), bs)
    model = build(cell)
    cbs = make_cbs(init) if init in INIT_CBS else []
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=Adam, cbs=cbs)
    return learn, cbs

def init_now(learn, init, cbs):
    "Apply `init` to `learn.model` now (as `fit` would for the callbacks); seconds"
    start = time.perf_counter()
    if INIT_FNS.get(init):
        with preserved_rng(): INIT_FNS[init](learn.model, training_batch(learn))
    for cb in cbs: cb.initialize()
    return time.perf_counter() - start

def init_digest(cell, init, seed, bs)->str:
    "Digest of the weights right after `init`"
    learn,cbs = setup(cell, init, seed, bs)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        if init != 'pytorch default': init_now(learn, init, cbs)
    return weights_digest(learn.model)

def train_run(cell, init, seed, epochs, bs, lr)->dict:
    """One run: test accuracy after each epoch, final losses, init seconds, LSUV warnings and a digest of the initial
    weights. Same seed => same weights before the init and same batch order for every init. For an init in
    `SAME_AS` whose initial weights equal those of its partner, no training: `same_as` names the partner"""
    learn,cbs = setup(cell, init, seed, bs)
    with warnings.catch_warnings(record=True) as ws, redirect_stdout(io.StringIO()):
        warnings.simplefilter('always')
        init_s = 0. if init == 'pytorch default' else init_now(learn, init, cbs)
        for cb in cbs: cb.once = True  # already done: fit must not re-run it
        digest = weights_digest(learn.model)
        if init in SAME_AS and init_digest(cell, SAME_AS[init], seed, bs) == digest:
            return dict(same_as=SAME_AS[init], init_s=init_s, digest=digest)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    vals = learn.recorder.values
    return dict(acc=[float(v[2]) for v in vals], train_loss=float(vals[-1][0]), valid_loss=float(vals[-1][1]),
                init_s=init_s, digest=digest, warnings=sorted({str(w.message)[:160] for w in ws if 'LSUV' in str(w.message)}))

@torch.no_grad()
def stream_stds(model, xb)->list:
    "Std of the residual stream after the stem (index 0) and after each ResBlock (1..), and of the logits (last)"
    out = []
    mods = [model[0], *(m for m in model.modules() if isinstance(m, ResBlock))]
    hs = [m.register_forward_hook(lambda m, i, o: out.append(o.double().std().item())) for m in mods]
    try: out.append(model(xb).double().std().item())
    finally:
        for h in hs: h.remove()
    return out

def stream_profile(blocks:int, act:str, init:str, seeds, bs:int=64)->dict:
    "Residual stream std per block right after `init` (mean over `seeds`, each on its first training batch)"
    rows = []
    for seed in seeds:
        learn,cbs = setup(('res1d', act, blocks), init, seed, bs)
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter('ignore')
            if init != 'pytorch default': init_now(learn, init, cbs)
            rows.append(stream_stds(learn.model, training_batch(learn)[0]))
    m = [statistics.mean(c) for c in zip(*rows)]
    return dict(stream=m[:-1], logits=m[-1])

# ---- statistics
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}
def t975(df:int)->float:
    "97.5% quantile of Student's t with `df` degrees of freedom (scipy if available)"
    try: from scipy.stats import t; return float(t.ppf(0.975, df))
    except ImportError: return T975.get(df, 1.96)

def paired_ci(a:list, b:list)->tuple:
    "Mean of a-b over pairs and its 95% paired-t interval (nan interval with one pair)"
    d = [x - y for x,y in zip(a, b)]
    m = statistics.mean(d)
    if len(d) < 2: return m, float('nan'), float('nan')
    h = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - h, m + h
