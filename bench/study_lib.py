"""Models, inits, one training run and the statistics for `bench/quality.py` (the training-quality study).

Models: plain Conv1d/Conv2d nets as `lsuv_fastai.demo.plain_convnet` but with any activation, and a residual Conv1d
net without normalization (blocks `x + branch(x)`, branch = conv-act-conv). Inits: the demo's fixed inits and the
`lsuv` package, our `LSUVCallback` with default settings and its variants."""
from __future__ import annotations
import functools, hashlib, io, math, statistics, time, warnings
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
# ---- head rules: post-processing of the output layer right after our LSUV init (issue 18, `bench/head_study.py`).
# Each is a function (model, xb, yb, head) -> dict of what it measured/did; it rescales only `head.weight` and
# `head.bias` in place. `xb`: the model's inputs of the LSUV batch (a tuple), `yb`: that batch's targets.
def _head_io(model, xb, head)->tuple:
    "(head input, logits) of `model` on `xb`, no grad, in the model's current mode"
    got = {}
    h = head.register_forward_hook(lambda m, i, o: got.update(inp=i[0].detach(), out=o.detach()))
    try:
        with torch.no_grad(): model(*xb)
    finally: h.remove()
    return got['inp'], got['out']

def _scale_head(head, s:float, bias:bool=True):
    "Multiply the head's weight (and bias, if `bias`) by `s`, in place"
    with torch.no_grad():
        head.weight.mul_(s)
        if bias and getattr(head, 'bias', None) is not None: head.bias.mul_(s)

def head_std(std:float):
    "Rule factory: scale the head's weight and bias so the logits' std on the batch is `std` (LSUV's own target is 1)"
    def rule(model, xb, yb, head):
        _,z = _head_io(model, xb, head)
        s = std / z.float().std().item()
        _scale_head(head, s)
        return dict(scale=s)
    rule.__doc__ = f"Logits' std on the LSUV batch set to {std} by one common factor on the head's weight and bias"
    return rule

def head_ce(margin:float=0.05, iters:int=40):
    """A target from the loss (`head_ce(margin)` makes the rule): scale the head's weight and bias by one factor s in (0, 1] so that the
    cross-entropy of the batch's logits, CE(s*z, y), equals ln(C) + `margin` (C = number of logits; ln C is the loss
    of the uniform prediction). CE(s*z) -> ln C as s -> 0 and grows with s for logits that do not yet predict the
    labels, so s is found by bisection on [0, 1]; if CE(z) <= ln C + margin already, nothing changes (s = 1: the rule
    only shrinks). The logits stay input-dependent (s > 0) and keep LSUV's zero mean. Edge cases: C < 2 (a regression
    head) or targets that are not class indices -> no change; a head without bias -> only the weight is scaled."""
    def rule(model, xb, yb, head):
        _,z = _head_io(model, xb, head)
        z = z.double().flatten(0, -2) if z.ndim > 2 else z.double()
        C = z.shape[-1]
        if C < 2 or yb is None or yb.dtype.is_floating_point: return dict(scale=1., skipped=True)
        y = yb.flatten()
        target = math.log(C) + margin
        ce = lambda s: F.cross_entropy(s*z, y).item()
        ce1 = ce(1.)
        if ce1 <= target: return dict(scale=1., ce_before=ce1, ce_after=ce1)
        lo,hi = 0., 1.
        for _ in range(iters):
            mid = (lo + hi)/2
            lo,hi = (mid, hi) if ce(mid) < target else (lo, mid)
        s = (lo + hi)/2
        _scale_head(head, s)
        return dict(scale=s, ce_before=ce1, ce_after=ce(s))
    rule.__doc__ = head_ce.__doc__
    return rule

def head_center(model, xb, yb, head):
    """Zero-mean logits per class: subtract from each output's bias that output's mean over the batch (removes the
    input-independent per-class offsets that remain after LSUV, whose mean target is one number for the whole layer),
    weight unchanged. The logits' std drops to their input-dependent part. No bias -> no change."""
    if getattr(head, 'bias', None) is None: return dict(skipped=True)
    _,z = _head_io(model, xb, head)
    off = z.double().flatten(0, -2).mean(0) if z.ndim > 2 else z.double().mean(0)
    with torch.no_grad(): head.bias.sub_(off.to(head.bias.dtype))
    return dict(offset_std=off.std().item())

def head_fisher(model, xb, yb, head):
    """A target from class separation: scale the head's weight and bias so the logits' std equals sqrt(eta2), where
    eta2 is the fraction of the head input's variance (summed over features) explained by the batch's class labels
    (between-class over total sum of squares), corrected for its chance level (C-1)/(N-1) with N samples and C classes
    present: eta2_adj = (eta2 - chance)/(1 - chance), the target std sqrt(eta2_adj) clipped to [0.01, 1]. Uninformative features -> small logits; features that separate the classes -> up
    to LSUV's unit std. Not class-index targets or fewer than 2 classes in the batch -> no change."""
    if yb is None or yb.dtype.is_floating_point: return dict(skipped=True)
    h,z = _head_io(model, xb, head)
    h,y = h.double().flatten(1), yb.flatten()
    cls = y.unique()
    N,C = len(y), len(cls)
    if C < 2 or N <= C: return dict(skipped=True)
    mu = h.mean(0)
    tot = (h - mu).pow(2).sum()
    betw = sum((y == c).sum() * (h[y == c].mean(0) - mu).pow(2).sum() for c in cls)
    eta2 = (betw / tot).item()
    chance = (C - 1)/(N - 1)
    adj = min(max((eta2 - chance)/(1 - chance), 1e-4), 1.)
    s = math.sqrt(adj) / z.double().std().item()
    _scale_head(head, s)
    return dict(scale=s, eta2=eta2, eta2_adj=adj)

def head_fanin(model, xb, yb, head):
    """A target from the head's fan-in: logits' std sqrt(C / fan_in), capped at 1 (C outputs, fan_in =
    weight.numel() / C; 0.18 for the 320-feature MNIST-1D heads, 0.28 for the 128-feature digits head)."""
    C = head.weight.shape[0]
    fan_in = head.weight.numel() // C
    return head_std(min(1., math.sqrt(C / fan_in)))(model, xb, yb, head)

HEAD_RULES = {'ours head=ce': head_ce(0.05), 'ours head=center': head_center, 'ours head=fisher': head_fisher,
              'ours head=fanin': head_fanin, 'ours head std=0.2': head_std(0.2)}
INIT_CBS.update({k: {} for k in HEAD_RULES})  # our default LSUV, then the rule

def first_batch(learn)->tuple:
    "(inputs tuple, targets) of the first training batch, as LSUV sees it, without changing training"
    from lsuv_fastai.callback import loader_state_kept, model_inputs
    dl = learn.dls.train
    with loader_state_kept(dl): b = next(iter(dl))
    xb = model_inputs(learn, b)
    yb = b[len(xb)] if len(b) > len(xb) else None
    return xb, (yb.as_subclass(torch.Tensor) if isinstance(yb, torch.Tensor) else yb)

def apply_head_rule(learn, init)->dict:
    "Apply `init`'s head rule (if any) to `learn.model`'s last LSUV layer, on the LSUV batch"
    if init not in HEAD_RULES: return {}
    xb,yb = first_batch(learn)
    ref = training_batch(learn)
    assert all(torch.equal(a, b) for a,b in zip(xb, ref)), 'head rule batch != LSUV batch'
    with preserved_rng(): return HEAD_RULES[init](learn.model, xb, yb, lsuv_layers(learn.model)[-1])

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

def setup(cell, init, seed, bs, opt_kw=None):
    "Learner for `cell` with `init` set up (not yet applied for callbacks) after `set_seed(seed)`: (learn, cbs)"
    set_seed(seed)
    dls = make_dls(cell_data(cell), bs)
    model = build(cell)
    cbs = make_cbs(init) if init in INIT_CBS else []
    opt = functools.partial(Adam, **opt_kw) if opt_kw else Adam  # opt_kw: e.g. eps (fastai's Adam: eps=1e-5)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, opt_func=opt, cbs=cbs)
    return learn, cbs

def init_now(learn, init, cbs):
    "Apply `init` to `learn.model` now (as `fit` would for the callbacks); seconds"
    start = time.perf_counter()
    if INIT_FNS.get(init):
        with preserved_rng(): INIT_FNS[init](learn.model, training_batch(learn))
    for cb in cbs: cb.initialize()
    learn.head_info = apply_head_rule(learn, init)
    return time.perf_counter() - start

def init_digest(cell, init, seed, bs)->str:
    "Digest of the weights right after `init`"
    learn,cbs = setup(cell, init, seed, bs)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        if init != 'pytorch default': init_now(learn, init, cbs)
    return weights_digest(learn.model)

def train_run(cell, init, seed, epochs, bs, lr, opt_kw=None)->dict:
    """One run: test accuracy after each epoch, final losses, init seconds, LSUV warnings and a digest of the initial
    weights. Same seed => same weights before the init and same batch order for every init. For an init in
    `SAME_AS` whose initial weights equal those of its partner, no training: `same_as` names the partner"""
    learn,cbs = setup(cell, init, seed, bs, opt_kw)
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
                init_s=init_s, digest=digest, head=getattr(learn, 'head_info', {}), warnings=sorted({str(w.message)[:160] for w in ws if 'LSUV' in str(w.message)}))

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
