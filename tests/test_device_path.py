"""The device path (statistics kept as tensors, read once at the end, as on an accelerator), run on the CPU.

On an accelerator `lsuv_init` reduces each layer's statistics with `var_mean` on the device and never reads them until
the end of the pass; on the CPU it reads them at once (`sum`/`dot` + `.item()`, which costs nothing there). Forcing the
device path on the CPU checks the same guarantees: every 'ok' layer meets the targets when re-measured, the weights
agree with the host path to float32 rounding, non-finite activations and dead layers are handled, and the number of
host reads does not grow with depth."""
import pytest, torch
from torch import nn
import torchvision.models as tvm
from lsuv_fastai.stats import forced_path
from lsuv_fastai.core import lsuv_init
from lsuv_fastai.test_utils import (run_lsuv, assert_meets_targets, counting_host_reads, copy_state, ConvLayer, TiedLM)


@pytest.fixture
def device_path():
    with forced_path('device'): yield


def both_paths(make, *batches, **kw):
    "(host model, device model, device report) of `lsuv_init` on two copies of `make()`"
    a, b = make(), make()
    lsuv_init(a, *batches, **kw)
    with forced_path('device'): rep = run_lsuv(b, *batches, **kw)[0]
    return a, b, rep


def seeded(f, seed=0):
    def make(): torch.manual_seed(seed); return f()
    return make


@pytest.mark.parametrize('make,shape', [
    (seeded(lambda: tvm.resnet18(num_classes=10)), (4, 3, 32, 32)),
    (seeded(lambda: tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)), (2, 3, 32, 32)),
    (seeded(lambda: nn.Sequential(*[nn.Sequential(nn.Conv1d(8 if i else 1, 8, 5, padding=2), nn.Tanh()) for i in range(12)])), (16, 1, 40)),
], ids=['resnet18', 'vit', 'conv1d-tanh'])
def test_device_path_agrees_with_host_path(make, shape):
    x = torch.randn(shape)
    a, b, rep = both_paths(make, x, train=False)
    assert set(rep.df.status) <= {'ok', 'dead'}
    assert_meets_targets(b, x, rep, train=False)
    for (k, v), w in zip(copy_state(a).items(), copy_state(b).values()):
        if v.is_floating_point(): torch.testing.assert_close(w, v, rtol=1e-4, atol=1e-5 * max(1., v.abs().max().item()))


def test_host_reads_do_not_grow_with_depth(device_path):
    "On the device path a pass reads the device a fixed number of times (the batch check, then one transfer)"
    counts = {}
    for depth in (4, 16, 64):
        m = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(depth)])
        with counting_host_reads() as c: lsuv_init(m, torch.randn(32, 16))
        counts[depth] = c.n
    assert len(set(counts.values())) == 1 and counts[4] <= 4, counts


def test_non_finite_names_the_layer_and_changes_nothing(device_path):
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with torch.no_grad(): m[2].weight.fill_(1e38)
    sd = copy_state(m)
    with pytest.raises(ValueError, match="layer '2'"): lsuv_init(m, torch.randn(8, 4) + 10)
    assert all(torch.equal(v, sd[k]) for k, v in copy_state(m).items())


def test_dead_layer_is_left_alone(device_path):
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    with torch.no_grad(): m[0].weight.zero_(); m[0].bias.fill_(-1.)
    sd = copy_state(m)
    rep, ws = run_lsuv(m, torch.randn(16, 4))
    assert rep.df.status.tolist() == ['dead', 'ok', 'ok']
    assert any('no variance' in w for w in ws)
    assert rep.df.iters.tolist() == [0, 1, 1]
    for k in ('0.weight', '0.bias'): assert torch.equal(m.state_dict()[k], sd[k]), f'{k} of the dead layer changed'
    assert not torch.equal(m.state_dict()['3.weight'], sd['3.weight'])   # the layers after it were adjusted


@pytest.mark.parametrize('path', ['host', 'device'])
def test_near_constant_layer_is_measured_with_its_new_weights(path):
    """|mean| far above the std: derived statistics cannot be trusted, and the folded bias a*b + c is the difference of
    two large float32 numbers. The layer is re-run with its new weights (the device path hands the pass to the host)."""
    m = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 4))
    with torch.no_grad(): m[0].weight.mul_(1e-4); m[0].bias.fill_(3.)
    x = torch.randn(64, 4)
    with forced_path(path), counting_host_reads() as c: rep, _ = run_lsuv(m, x)
    assert c.by.get('item', 0) > 0   # the host path measured layer by layer
    assert rep.df.status.tolist() == ['ok', 'ok'], rep
    assert_meets_targets(m, x, rep)


def test_rerun_and_tied_targets_on_the_device_path(device_path):
    torch.manual_seed(0)
    cl = nn.Sequential(ConvLayer(1, 8), ConvLayer(8, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    x = torch.randn(32, 1, 16, 16)
    rep, _ = run_lsuv(cl, x, modules=[cl[0], cl[1], cl[4]])
    assert set(rep.df.status) == {'ok'}
    assert_meets_targets(cl, x, rep, modules=[cl[0], cl[1], cl[4]])
    lm, xi = TiedLM(), torch.randint(0, 20, (8, 12))
    rep, _ = run_lsuv(lm, xi)
    assert rep.df.status.tolist() == ['ok', 'skipped']


def test_several_batches_on_the_device_path(device_path):
    xs = [torch.randn(16, 20) * (i + 1) for i in range(3)]
    mk = seeded(lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4)))
    a, b = mk(), mk()
    lsuv_init(a, *xs); lsuv_init(b, torch.cat(xs))
    for p, q in zip(a.parameters(), b.parameters()): torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
