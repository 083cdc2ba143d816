"""Model zoo: `lsuv_init` on real architectures, checked by an independent re-measurement (`layer_stats`).

Every 'ok' target must have |std-1| <= 1e-3 and, where it has a bias, |mean| <= 1e-3 when re-measured.

How the re-measurement stays comparable with the LSUV pass:
- BatchNorm in train mode normalizes with the statistics of the batch, so the same batch gives the same
  activations in both forwards: deterministic, nothing to do.
- Dropout / stochastic depth in train mode draw random masks. `lsuv_init` restores the global RNG state, so
  seeding before `lsuv_init` and again before `layer_stats` replays the same masks *provided the two forwards
  consume the RNG identically*. That holds when every target is solved in closed form (plain Linear/Conv/
  ConvTranspose/MultiheadAttention: the output is rescaled in place, the forward runs once) and for re-run
  targets (custom layers) that draw no random numbers themselves, since LSUV re-runs only the target module.
  It does NOT hold with `ortho=True` (the orthogonal init draws from the RNG before the forward), nor for a
  re-run target containing dropout; use `train=False` there. Mask generation depends only on shapes, not on
  values, so the changed weights do not change the masks.
"""
import pytest, torch
from torch import nn
import torchvision.models as tvm
from lsuv_fastai.core import lsuv_init, layer_stats, lsuv_layers
from lsuv_fastai.utils import module_names
from lsuv_fastai.test_utils import run_lsuv, assert_meets_targets, state_equal, ConvLayer

SEED = 42


def check_zoo(model, xb, *, train=True, seeded=False, allowed=('ok',), modules=None, min_ok=1):
    """LSUV `model` on `xb`, then re-measure every target. `seeded`: reseed before both forwards (dropout).
    `allowed`: statuses this model may legitimately report. Returns the report."""
    bufs = {k: v.clone() for k, v in model.named_buffers()}
    if seeded: torch.manual_seed(SEED)
    rep, ws = run_lsuv(model, xb, modules=modules, train=train)
    assert set(rep.df.status) <= set(allowed), rep
    assert (rep.df.status == 'ok').sum() >= min_ok, rep
    stats, checked = assert_meets_targets(model, xb, rep, modules=modules, train=train, seed=SEED if seeded else None)
    assert checked == (rep.df.status == 'ok').sum()
    # report and re-measurement agree on the result, not only on "within tol"
    names = {n: m for m, n in module_names(model).items()}
    for r in rep.df[rep.df.status == 'ok'].itertuples():
        assert abs(stats[names[r.name]][1] - r.std_after) <= 1e-4, (r.name, stats[names[r.name]], r.std_after)
    assert state_equal(bufs, {k: v for k, v in model.named_buffers()}), "BatchNorm running stats changed"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return rep


def img(n=2, c=3, s=64):
    # 2x3x64x64 keeps >= 8 values per channel in the last BatchNorms. With batch 2 at 32x32 (1x1 maps at
    # the end) a BatchNorm normalizes 2 values per channel: float32 rounding (in-place rescale during the
    # pass vs. rescaled weights afterwards) is then amplified up to ~3e-2 in resnet50 (float64: 7e-7).
    return torch.randn(n, c, s, s)


# ---------------------------------------------------------------- torchvision
def test_resnet18():
    rep = check_zoo(tvm.resnet18(num_classes=10), img(4, s=32))
    assert len(rep.df) == len(lsuv_layers(tvm.resnet18())) == 21


@pytest.mark.slow
def test_resnet50():
    check_zoo(tvm.resnet50(num_classes=10), img(2))


@pytest.mark.slow
def test_vgg11_with_dropout_seeded():
    check_zoo(tvm.vgg11(num_classes=10), img(2), seeded=True)


def test_vgg11_dropout_needs_the_same_seed():
    "Why the seeding matters: without it the classifier's re-measured std is off (new dropout masks)"
    m = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))
    xb = torch.randn(8, 64)
    torch.manual_seed(SEED); rep = lsuv_init(m, xb)
    torch.manual_seed(SEED + 1); st = layer_stats(m, xb)
    assert abs(st[m[6]][1] - 1) > 1e-3   # other masks, other stats
    assert_meets_targets(m, xb, rep, seed=SEED)  # same masks, same stats


@pytest.mark.slow
def test_densenet121():
    check_zoo(tvm.densenet121(num_classes=10), img(2))


def test_mobilenet_v3_small_with_dropout_seeded():
    check_zoo(tvm.mobilenet_v3_small(num_classes=10), img(2), seeded=True)


@pytest.mark.slow
def test_efficientnet_b0_stochastic_depth_seeded():
    check_zoo(tvm.efficientnet_b0(num_classes=10), img(2), seeded=True)


@pytest.mark.slow
def test_convnext_tiny_stochastic_depth_seeded():
    check_zoo(tvm.convnext_tiny(num_classes=10), img(2), seeded=True)


def small_vit():
    return tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


def test_vision_transformer_train_and_eval():
    # torchvision zero-initializes the head (weight and bias): its output is constant, so it is 'dead'
    for train in (True, False):
        m = small_vit()
        rep = check_zoo(m, img(2, s=32), train=train, allowed=('ok', 'dead'))
        assert rep.df.name[rep.df.status == 'dead'].tolist() == ['heads.head']
        assert 'MultiheadAttention' in set(rep.df.type[rep.df.status == 'ok'])


# ---------------------------------------------------------------- nn.TransformerEncoder
def encoder(): return nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)


def test_transformer_encoder_train_mode_seeded():
    rep = check_zoo(encoder(), torch.randn(4, 6, 32), seeded=True)   # dropout=0.1 in every layer
    assert len(rep.df) == 6


def test_transformer_encoder_eval_mode():
    "Eval + no_grad is where PyTorch would take its fused fast path, which skips the submodules' hooks"
    m = encoder()
    fast = torch.backends.mha.get_fastpath_enabled()
    rep = check_zoo(m, torch.randn(4, 6, 32), train=False)
    assert len(rep.df) == 6
    assert torch.backends.mha.get_fastpath_enabled() == fast


class PaddedEncoder(nn.Module):
    "An encoder called with a key padding mask: in eval, PyTorch runs it on nested tensors (fast path)"
    def __init__(self): super().__init__(); self.enc = encoder()
    def forward(self, x, pad): return self.enc(x, src_key_padding_mask=pad)


def padded_batch():
    x, pad = torch.randn(4, 6, 32), torch.zeros(4, 6, dtype=torch.bool)
    pad[0, 4:] = pad[2, 3:] = True   # right padding
    return x, pad


def test_transformer_encoder_eval_fast_path_with_padding_mask():
    """With the fast path enabled, a plain hook sees NestedTensors (or nothing) in eval; `lsuv_init` and
    `layer_stats` both switch the fast path off, so both see the same dense tensors and can compare"""
    m, xb = PaddedEncoder().eval(), padded_batch()
    seen = []
    h = m.enc.layers[0].linear1.register_forward_hook(lambda mod, i, o: seen.append(o.is_nested))
    with torch.no_grad(): m(*xb)
    h.remove()
    assert seen == [True]        # what an unaware re-measurement would get
    check_zoo(m, xb, train=False)
    assert len(layer_stats(m, xb, train=False)) == 6
    with torch.no_grad():        # after LSUV, the fast path and the slow path still agree
        y_fast = m(*xb)
        torch.backends.mha.set_fastpath_enabled(False)
        try: y_slow = m(*xb)
        finally: torch.backends.mha.set_fastpath_enabled(True)
    keep = ~xb[1]
    torch.testing.assert_close(y_fast[keep], y_slow[keep], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- fastai
def test_fastai_xresnet18():
    from fastai.vision.all import xresnet18
    check_zoo(xresnet18(n_out=10), img(2))


def test_fastai_dynamic_unet():
    from fastai.vision.all import create_body, DynamicUnet, resnet18
    body = create_body(resnet18(), n_in=3, pretrained=False)
    m = DynamicUnet(body, 3, (64, 64))
    hooks0 = sum(len(mod._forward_hooks) for mod in m.modules())   # DynamicUnet's own skip-connection hooks
    rep = check_zoo(m, img(2))
    assert len(rep.df) == len(lsuv_layers(m))
    assert sum(len(mod._forward_hooks) for mod in m.modules()) == hooks0
    assert m(img(2)).shape == (2, 3, 64, 64)


def tabular_batch(n=16):
    x_cat = torch.stack([torch.randint(0, 5, (n,)), torch.randint(0, 8, (n,))], 1)
    return x_cat, torch.randn(n, 3)


def test_fastai_tabular_model():
    from fastai.tabular.all import TabularModel
    m = TabularModel([(5, 3), (8, 4)], n_cont=3, out_sz=2, layers=[32, 16], ps=[0.1, 0.1], embed_p=0.1)
    rep = check_zoo(m, tabular_batch(), seeded=True)   # dropout in the embeddings and the layers
    assert rep.df.type.tolist() == ['Linear'] * 3


# ---------------------------------------------------------------- hand-made
def test_conv_transpose_decoder():
    m = nn.Sequential(nn.Linear(8, 16*4*4), nn.Unflatten(1, (16, 4, 4)), nn.ReLU(),
                      nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1), nn.Flatten(2),
                      nn.ConvTranspose1d(3, 2, 3))
    rep = check_zoo(m, torch.randn(8, 8))
    assert rep.df.type.tolist() == ['Linear', 'ConvTranspose2d', 'ConvTranspose2d', 'ConvTranspose1d']


def test_conv3d():
    m = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, stride=2, bias=False),
                      nn.BatchNorm3d(4), nn.ReLU(), nn.ConvTranspose3d(4, 2, 2, stride=2))
    check_zoo(m, torch.randn(2, 2, 8, 8, 8))


class Shared(nn.Module):
    "The same Linear and Conv used at two places; targets are measured at their first call"
    def __init__(self):
        super().__init__()
        self.conv, self.lin, self.head = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4*8*8, 4*8*8), nn.Linear(4*8*8, 5)
        self.alias = self.conv    # registered twice: reported once, under its first name
    def forward(self, x):
        x = self.alias(torch.relu(self.conv(x)))
        x = x.flatten(1)
        return self.head(self.lin(torch.tanh(self.lin(x))))


def test_module_shared_between_two_places():
    m = Shared()
    rep = check_zoo(m, torch.randn(8, 4, 8, 8))
    assert rep.df.name.tolist() == ['conv', 'lin', 'head']
    # the second call of each shared module used the corrected weights during the pass, as after it
    st = layer_stats(m, torch.randn(8, 4, 8, 8))
    assert set(st) == {m.conv, m.lin, m.head}


def test_course_conv_layer_given_explicitly():
    "A conv + shifted leaky ReLU with `weight` and a numeric `bias` property: re-run, not solved in closed form"
    m = nn.Sequential(ConvLayer(3, 8), ConvLayer(8, 16), ConvLayer(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    mods = lambda o: [o[0], o[1], o[2], o[5]]
    subs = [l.relu.sub for l in m[:3]]
    rep = check_zoo(m, img(8, s=32), modules=mods)
    assert rep.df.type.tolist() == ['ConvLayer'] * 3 + ['Linear']
    assert all(isinstance(l.relu.sub, float) for l in m[:3]) and [l.relu.sub for l in m[:3]] != subs


def test_channels_last_resnet18():
    "Non-contiguous (channels_last) activations are measured like contiguous ones"
    m = tvm.resnet18(num_classes=10).to(memory_format=torch.channels_last)
    check_zoo(m, img(4, s=32).contiguous(memory_format=torch.channels_last))


def test_model_that_is_a_single_target():
    "The root module itself as the only target: reported under its class name"
    m = nn.Conv2d(3, 8, 3)
    rep = check_zoo(m, img(4, s=16))
    assert rep.df.name.tolist() == ['Conv2d']
