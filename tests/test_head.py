"""`head='ce'`: the output layer scaled from the loss (lsuv_init and the callback). See bench/results/head.md for why it
is an option and not the default."""
import math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from lsuv_fastai.core import lsuv_init
from lsuv_fastai.callback import LSUVCallback, training_batch
from lsuv_fastai.test_utils import run_lsuv, assert_meets_targets, copy_state, state_equal, GeneralRelu, synth_learner


def grelu_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[m for i in range(8) for m in (nn.Conv1d(1 if i == 0 else 16, 16, 3, padding=1), GeneralRelu())],
                         nn.Flatten(), nn.Linear(16*20, 10))


def test_the_batch_loss_lands_on_ln_c_plus_margin():
    m, x, y = grelu_net(), torch.randn(128, 1, 20), torch.randint(0, 10, (128,))
    rep = lsuv_init(m, x, head='ce', yb=y)
    assert rep.df.status.tolist() == ['ok']*8 + ['head (ce)']
    assert F.cross_entropy(m(x), y).item() == pytest.approx(math.log(10) + 0.05, abs=1e-4)
    assert_meets_targets(m, x, rep)
    s = rep.df.std_after.iloc[-1]
    assert 0 < s < 1 and rep.df.mean_after.iloc[-1] == pytest.approx(0, abs=1e-3*s + 1e-6)


def test_matches_the_studys_rule():
    "The study applied the rule after a default LSUV (bench/study_lib.head_ce); the option gives the same weights"
    x, y = torch.randn(128, 1, 20), torch.randint(0, 10, (128,))
    a, b = grelu_net(), grelu_net()
    lsuv_init(a, x, head='ce', yb=y)
    lsuv_init(b, x)
    with torch.no_grad(): z = b(x).double()
    ce = lambda s: F.cross_entropy(s*z, y).item()
    lo, hi = 0., 1.
    for _ in range(40):
        mid = (lo + hi)/2
        lo, hi = (mid, hi) if ce(mid) < math.log(10) + 0.05 else (lo, mid)
    with torch.no_grad(): b[-1].weight.mul_((lo + hi)/2); b[-1].bias.mul_((lo + hi)/2)
    for p, q in zip(a.parameters(), b.parameters()): torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_a_head_near_the_uniform_guess_is_left_at_the_goal():
    "The rule only shrinks: a loss below ln C + margin leaves the head 'ok' at std 1"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(256, 8); y = (m(x).argmax(1)).detach()   # labels the logits already predict
    rep = lsuv_init(m, x, head='ce', yb=y)
    assert rep.df.status.tolist() == ['ok', 'ok']


def test_re_run_head_and_atomicity():
    "A custom head (fitted by re-running) is scaled too; bad labels leave the model exactly as it was"
    class Head(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(16, 10)
        def forward(self, x): return self.lin(x)
        @property
        def weight(self): return self.lin.weight
        @property
        def bias(self): return self.lin.bias
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), GeneralRelu(), Head())
    x, y = torch.randn(256, 8), torch.randint(0, 10, (256,))
    sd = copy_state(m)
    with pytest.raises(ValueError, match='one class index per row of logits: 256 integer labels, got 128'):
        lsuv_init(m, x, modules=[m[0], m[2]], head='ce', yb=y[:128])
    assert state_equal(copy_state(m), sd)
    rep = lsuv_init(m, x, modules=[m[0], m[2]], head='ce', yb=y)
    assert rep.df.status.tolist() == ['ok', 'head (ce)']
    assert F.cross_entropy(m(x), y).item() == pytest.approx(math.log(10) + 0.05, abs=1e-4)


def test_refusals():
    m, x, y = grelu_net(), torch.randn(16, 1, 20), torch.randint(0, 10, (16,))
    with pytest.raises(ValueError, match="^`head` must be None or 'ce', got 'mse'$"): lsuv_init(m, x, head='mse', yb=y)
    with pytest.raises(ValueError, match="head='ce' needs the batch's labels"): lsuv_init(m, x, head='ce')
    with pytest.raises(ValueError, match="needs the model's output to be the logits that its last layer returns"):
        lsuv_init(nn.Sequential(m, nn.LogSoftmax(-1)), x, head='ce', yb=y)
    with pytest.raises(TypeError, match='takes no `yb`'): LSUVCallback(yb=y)


def test_callback_takes_the_labels_from_the_batch():
    learn = synth_learner(LSUVCallback(head='ce'))
    xb, yb = training_batch(learn, targets=True)
    with learn.no_logging(): learn.lsuv_init()
    rep = learn.lsuv.report
    assert rep.df.status.tolist()[-1] in ('head (ce)', 'ok')
    with torch.no_grad(): ce = F.cross_entropy(learn.model(*xb), yb).item()
    assert ce <= math.log(2) + 0.05 + 1e-4
