"""LSUV in the workflows fastai and PyTorch users run, on tiny synthetic data: each test names the model or loader.

Cases from the field-proof issue (numbered as there), then more of the same kind:
1 tied weights used functionally (AWD-LSTM language model), 2 resuming a checkpoint, 3 a pretrained body,
4 plain torch loaders with several inputs, 5 batches of different shapes, 6 the batch order, 7 dict inputs,
8 a spectral-norm layer is not even read, 9 torch.compile, 10 mean=None leaves biases bit-identical."""
import io, warnings
from contextlib import redirect_stdout
import pytest, torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader as TorchDL, TensorDataset
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader as FastaiDL
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import set_seed
from fastai.text.all import (AWD_LSTM, get_language_model, get_text_classifier, awd_lstm_lm_config, awd_lstm_clas_config,
                             LMDataLoader, SortedDL, pad_input_chunk, ModelResetter, RNNCallback)
from lsuv_fastai.core import lsuv_init
from lsuv_fastai.callback import LSUVCallback, training_batch, loader_state_kept
from lsuv_fastai.test_utils import (run_lsuv, assert_meets_targets, copy_state, state_equal, snapshot, assert_same_snapshot,
                                    TiedLM, synth_learner, deep_mlp)

def params(m)->dict: return {k: v.detach().clone() for k, v in m.named_parameters()}

def quiet(f, *args, **kwargs):
    "Call `f` with stdout swallowed (fastai's progress and LSUV's line); returns (result, what was printed)"
    with redirect_stdout(io.StringIO()) as out: res = f(*args, **kwargs)
    return res, out.getvalue()

LM_CFG = dict(awd_lstm_lm_config, emb_sz=16, n_hid=32, n_layers=2)
CLAS_CFG = dict(awd_lstm_clas_config, emb_sz=16, n_hid=32, n_layers=2)
VOCAB = 60


# ---------------------------------------------------------------- 1. tied weights used functionally
def test_awd_lstm_language_model_tied_decoder_is_left_alone():
    "The encoder's embedding runs through EmbeddingDropout (F.embedding): the tied decoder must not be rescaled"
    torch.manual_seed(0)
    lm = get_language_model(AWD_LSTM, VOCAB, config=LM_CFG)
    x = torch.randint(0, VOCAB, (8, 12))
    w0, snap = lm[1].decoder.weight.detach().clone(), snapshot(lm)
    hidden0 = lm[0].hidden
    rep, ws = run_lsuv(lm, x)
    assert rep.df.status.tolist() == ['skipped']
    assert any("'1.decoder' (Linear): shares its weight with '0.encoder' (Embedding), which used it before" in w for w in ws), ws
    assert torch.equal(lm[1].decoder.weight, w0)
    assert_same_snapshot(snap, lm)
    assert lm[0].hidden is hidden0   # the stored hidden state is put back too


class FunctionalTiedLM(TiedLM):
    def forward(self, x): return self.out(torch.tanh(self.hid(F.embedding(x, self.emb.weight))))


class TiedGRULM(nn.Module):
    "A GRU language model: embedding used through F.embedding with dropout on its rows, decoder tied to it"
    def __init__(self, v=40, d=16):
        super().__init__()
        self.emb, self.rnn, self.proj, self.dec = nn.Embedding(v, d), nn.GRU(d, d, batch_first=True), nn.Linear(d, d), nn.Linear(d, v)
        self.dec.weight = self.emb.weight
    def forward(self, x):
        w = F.dropout(self.emb.weight, 0.1, self.training)
        return self.dec(self.proj(self.rnn(F.embedding(x, w))[0]))


@pytest.mark.parametrize('make', [FunctionalTiedLM, TiedGRULM])
def test_tied_decoder_of_functionally_used_embedding(make):
    m = make(); x = torch.randint(0, 20, (8, 10))
    out = m.out if hasattr(m, 'out') else m.dec
    w0 = out.weight.detach().clone()
    torch.manual_seed(3); rep, ws = run_lsuv(m, x)
    assert rep.df.status.tolist() == ['ok', 'skipped'], rep
    assert torch.equal(out.weight, w0)
    assert_meets_targets(m, x, rep, seed=3)


def test_tie_with_a_module_that_runs_later_is_adjusted():
    "The first module to use a shared weight wins, whether a target or not: here the Linear runs first"
    class LateEmbedding(nn.Module):
        def __init__(self):
            super().__init__(); self.lin, self.emb = nn.Linear(8, 8), nn.Embedding(8, 8); self.emb.weight = self.lin.weight
        def forward(self, x): return self.lin(x)
    m = LateEmbedding(); x = torch.randn(16, 8)
    rep, _ = run_lsuv(m, x)
    assert rep.df.status.tolist() == ['ok']
    assert_meets_targets(m, x, rep)


# ---------------------------------------------------------------- 2. resuming a checkpoint
def test_resuming_a_checkpoint_keeps_the_trained_weights(tmp_path):
    learn = synth_learner(path=tmp_path)
    quiet(learn.fit, 3, 1e-2)
    learn.save('ckpt'); trained = copy_state(learn.model)
    val_before = learn.validate()[0]
    learn = synth_learner(LSUVCallback(), path=tmp_path)
    learn.load('ckpt')
    _, out = quiet(learn.fit, 1, 0.)
    assert out.startswith('LSUV: nothing to initialize: all 13 layers hold trained weights'), out
    assert state_equal(copy_state(learn.model), trained)
    assert abs(learn.validate()[0] - val_before) < 1e-6


def test_loading_part_of_a_model_initializes_the_rest():
    learn = synth_learner(LSUVCallback())
    learn.model[:4].load_state_dict(deep_mlp(seed=1)[:4].state_dict())
    loaded = params(learn.model[:4])
    _, out = quiet(learn.fit, 1, 0.)
    assert out.startswith('LSUV: 9 layers (9 ok)') and '4 loaded or changed since the callback joined' in out, out
    assert state_equal(params(learn.model[:4]), loaded)


def tabular_learner_of(cbs, path='.'):
    import pandas as pd
    from fastai.tabular.all import TabularDataLoaders, tabular_learner, Categorify, Normalize
    g = torch.Generator().manual_seed(0)
    df = pd.DataFrame({'a': torch.randint(0, 4, (200,), generator=g).numpy(), 'b': torch.randn(200, generator=g).numpy(),
                       'c': torch.randn(200, generator=g).numpy()})
    df['y'] = ((df.b + df.c) > 0).astype(int)
    dls = TabularDataLoaders.from_df(df, path=path, cat_names=['a'], cont_names=['b', 'c'], y_names='y', procs=[Categorify, Normalize], bs=32)
    return tabular_learner(dls, layers=[16, 8], cbs=cbs)


def test_exported_learner_does_not_initialize_again(tmp_path):
    from fastai.learner import load_learner
    learn = tabular_learner_of(LSUVCallback(), tmp_path)
    quiet(learn.fit, 1, 1e-2)
    learn.export(tmp_path/'export.pkl')
    learn2 = load_learner(tmp_path/'export.pkl')
    learn2.dls = learn.dls
    before = params(learn2.model)
    _, out = quiet(learn2.fit, 1, 0.)
    assert 'LSUV' not in out and state_equal(params(learn2.model), before), out


def test_adding_the_callback_after_training_keeps_the_weights():
    learn = synth_learner()
    quiet(learn.fit, 1, 1e-2)
    trained = copy_state(learn.model)
    _, out = quiet(learn.fit, 1, 0., cbs=LSUVCallback())
    assert 'trained by an earlier fit' in out and state_equal(copy_state(learn.model), trained), out


# ---------------------------------------------------------------- 3. pretrained bodies
@pytest.fixture
def offline_resnet18_weights(tmp_path, monkeypatch):
    "torchvision's 'pretrained' resnet18, served from a local cache (random weights: nothing can be downloaded here)"
    from torchvision.models import resnet18, ResNet18_Weights
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    (tmp_path/'hub'/'checkpoints').mkdir(parents=True)
    torch.manual_seed(123)
    torch.save(resnet18().state_dict(), tmp_path/'hub'/'checkpoints'/ResNet18_Weights.DEFAULT.url.split('/')[-1])
    return resnet18


def image_dls(n=32, size=32):
    x = torch.randn(n, 3, size, size); y = torch.randint(0, 3, (n,))
    dls = DataLoaders.from_dsets(list(zip(x[:24], y[:24])), list(zip(x[24:], y[24:])), bs=8, num_workers=0)
    dls.c = 3
    return dls


def test_vision_learner_pretrained_body_is_left_alone(offline_resnet18_weights):
    from fastai.vision.all import vision_learner
    learn = vision_learner(image_dls(), offline_resnet18_weights, cbs=LSUVCallback(), n_out=3, loss_func=CrossEntropyLossFlat())  # pretrained=True, the default
    body = params(learn.model[0])
    learn.unfreeze()   # even unfrozen before the first fit, the body stays as it was loaded
    _, out = quiet(learn.fit, 1, 0.)   # lr 0: what changes is LSUV's doing (BatchNorm's running stats aside)
    assert out.startswith('LSUV: 2 layers (2 ok)') and '20 pretrained body' in out, out
    assert state_equal(params(learn.model[0]), body)
    assert learn.lsuv.report.df.name.tolist() == ['1.4', '1.8']


def test_vision_learner_fine_tune_initializes_only_the_head(offline_resnet18_weights):
    from fastai.vision.all import vision_learner
    learn = vision_learner(image_dls(), offline_resnet18_weights, cbs=LSUVCallback(), n_out=3, loss_func=CrossEntropyLossFlat())
    body = copy_state(learn.model[0])
    _, out = quiet(learn.fine_tune, 1, 0.)
    assert out.count('LSUV:') == 1 and out.startswith('LSUV: 2 layers (2 ok)'), out
    assert body['0.weight'].equal(learn.model[0][0].weight.detach())  # lr 0: the pretrained stem is untouched


def test_unet_learner_without_pretrained_weights_initializes_everything():
    from fastai.vision.all import unet_learner
    from fastai.vision.models import resnet18
    x = torch.randn(16, 3, 32, 32); y = torch.randint(0, 2, (16, 32, 32))
    dls = DataLoaders.from_dsets(list(zip(x[:12], y[:12])), list(zip(x[12:], y[12:])), bs=4, num_workers=0)
    learn = unet_learner(dls, resnet18, pretrained=False, n_out=2, loss_func=CrossEntropyLossFlat(axis=1), cbs=LSUVCallback())
    _, out = quiet(learn.fit, 1, 1e-3)
    rep = learn.lsuv.report
    assert 'left alone' not in out and len(rep.df) > 30 and (rep.df.status == 'ok').mean() > 0.9, out


# ---------------------------------------------------------------- 4. plain torch loaders with several inputs
class TwoInputs(nn.Module):
    def __init__(self): super().__init__(); self.a, self.b, self.out = nn.Linear(8, 16), nn.Linear(3, 16), nn.Linear(16, 2)
    def forward(self, x1, x2): return self.out(torch.relu(self.a(x1) + self.b(x2)))


def test_plain_torch_loaders_with_two_inputs():
    ds = TensorDataset(torch.randn(96, 8), torch.randn(96, 3), torch.randint(0, 2, (96,)))
    dls = DataLoaders(TorchDL(ds, batch_size=16, shuffle=True), TorchDL(ds, batch_size=16))
    learn = Learner(dls, TwoInputs(), loss_func=CrossEntropyLossFlat(), cbs=LSUVCallback())
    quiet(learn.fit, 1, 1e-3)
    assert learn.lsuv.report.df.status.tolist() == ['ok']*3


# ---------------------------------------------------------------- 5. batches of different shapes
def text_items(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(2, VOCAB, (int(torch.randint(5, 40, (1,), generator=g)),), generator=g), torch.tensor(i % 2)) for i in range(n)]


def text_classifier_learner_of(cbs):
    set_seed(0)
    items = text_items()
    dl = lambda its, shuffle: SortedDL(its, before_batch=pad_input_chunk, bs=8, shuffle=shuffle, num_workers=0)
    dls = DataLoaders(dl(items[:48], True), dl(items[48:], False))
    model = get_text_classifier(AWD_LSTM, VOCAB, 2, config=CLAS_CFG)
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[ModelResetter(), RNNCallback()] + cbs)


def test_awd_lstm_text_classifier_with_padded_batches_of_different_lengths():
    learn = text_classifier_learner_of([LSUVCallback(n_batches=4)])
    lengths = {b[0].shape[1] for b in list(learn.dls.train)[:4]}
    assert len(lengths) > 1   # separate batches of 8 differ in length: concatenating them would fail
    xb = training_batch(learn, 4)
    assert xb[0].shape == (32, max(len(t) for t, _ in learn.dls.train.dataset))  # one batch of 32, padded as one
    quiet(learn.fit, 1, 1e-3)
    rep = learn.lsuv.report
    assert set(rep.df.status) == {'ok'} and rep.df.type.tolist() == ['Linear', 'Linear']


def test_several_batches_give_the_statistics_of_their_union():
    "Equal-shape batches in one model without batch-level layers: LSUV on 3 batches = LSUV on their concatenation"
    xs = [torch.randn(16, 20) for _ in range(3)]
    a, b = deep_mlp(6), deep_mlp(6)
    lsuv_init(a, *xs); lsuv_init(b, torch.cat(xs))
    for p, q in zip(a.parameters(), b.parameters()): torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- 6. the batch order
def epoch(dl): return [torch.cat([t.flatten().float() for t in b]) if isinstance(b, (tuple, list)) else b.flatten() for b in dl]


def same_epochs(make, draw):
    "An epoch of a loader from which LSUV's batches were drawn, and of an identical one left alone, batch by batch"
    set_seed(0); a = make()
    set_seed(0); b = make()
    with loader_state_kept(a): draw(a)
    set_seed(1); ea = epoch(a)   # the same global RNG state for both epochs (samplers without a generator draw from it)
    set_seed(1); eb = epoch(b)
    return len(ea) == len(eb) and all(torch.equal(x, y) for x, y in zip(ea, eb))


def lm_loader():
    docs = [torch.randint(0, VOCAB, (int(n),)) for n in torch.randint(20, 60, (30,))]
    return LMDataLoader(docs, bs=4, seq_len=10, shuffle=True)


@pytest.mark.parametrize('make', [
    lambda: FastaiDL(list(range(100)), bs=8, shuffle=True),
    lm_loader,
    lambda: SortedDL(text_items(), before_batch=pad_input_chunk, bs=8, shuffle=True),
    lambda: TorchDL(TensorDataset(torch.arange(100.)), batch_size=8, shuffle=True),
    lambda: TorchDL(TensorDataset(torch.arange(100.)), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)),
], ids=['fastai DataLoader', 'LMDataLoader', 'SortedDL', 'torch DataLoader', 'torch DataLoader with its own generator'])
def test_drawing_batches_leaves_the_loader_as_it_was(make):
    assert same_epochs(make, lambda dl: [b for _, b in zip(range(3), dl)])


def test_without_keeping_state_the_epochs_would_differ():
    "Why the test above can fail: drawing from an LMDataLoader or a seeded torch loader changes the next epoch"
    for make in (lm_loader, lambda: TorchDL(TensorDataset(torch.arange(100.)), batch_size=8, shuffle=True,
                                            generator=torch.Generator().manual_seed(5))):
        set_seed(0); a = make(); set_seed(0); b = make()
        [x for _, x in zip(range(3), a)]
        set_seed(1); ea = epoch(a); set_seed(1); eb = epoch(b)
        assert not all(torch.equal(x, y) for x, y in zip(ea, eb))


def test_distributed_dl_on_one_process(monkeypatch):
    import fastai.distributed as fd
    monkeypatch.setattr(fd.DistributedDL, '_broadcast', lambda self, t, rank: list(t))
    make = lambda: fd.DistributedDL(FastaiDL(list(range(100)), bs=8, shuffle=True), rank=0, world_size=1)
    assert same_epochs(make, lambda dl: [b for _, b in zip(range(3), dl)])


def test_lm_learner_batches_are_those_without_lsuv():
    "A language-model Learner: the first-epoch batches after LSUV are those of a run without it"
    def first_epoch(cbs):
        set_seed(0)
        dls = DataLoaders(lm_loader(), lm_loader())
        learn = Learner(dls, get_language_model(AWD_LSTM, VOCAB, config=LM_CFG), loss_func=CrossEntropyLossFlat(),
                        cbs=[ModelResetter(), RNNCallback()] + cbs)
        seen = []
        class Record(Callback):
            def before_batch(self):
                if self.training: seen.append(self.xb[0].clone())
        quiet(learn.fit, 1, 0., cbs=Record())
        return seen
    a, b = first_epoch([LSUVCallback(n_batches=2)]), first_epoch([])
    assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- 7. dict inputs
class DictNet(nn.Module):
    def __init__(self): super().__init__(); self.emb, self.lin, self.out = nn.Embedding(20, 8), nn.Linear(3, 8), nn.Linear(8, 2)
    def forward(self, d): return self.out(torch.relu(self.emb(d['input_ids']).mean(1) + self.lin(d['feats'])))


def test_dict_inputs_in_a_fastai_learner():
    items = [({'input_ids': torch.randint(0, 20, (6,)), 'feats': torch.randn(3)}, torch.tensor(i % 2)) for i in range(64)]
    dls = DataLoaders.from_dsets(items[:48], items[48:], bs=16, num_workers=0)
    learn = Learner(dls, DictNet(), loss_func=CrossEntropyLossFlat(), cbs=LSUVCallback(n_batches=2))
    quiet(learn.fit, 1, 1e-3)
    assert learn.lsuv.report.df.status.tolist() == ['ok', 'ok']


# ---------------------------------------------------------------- 8. spectral norm
def test_spectral_norm_layer_is_skipped_without_being_read():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.utils.parametrizations.spectral_norm(nn.Linear(16, 16)), nn.ReLU(), nn.Linear(16, 2))
    m.train()
    sn = copy_state(m[2])
    rep, ws = run_lsuv(m, torch.randn(32, 8))
    assert rep.df.status.tolist() == ['ok', 'skipped', 'ok']   # in execution order
    assert any('spectral norm divides its weight by the largest singular value' in w for w in ws), ws
    assert state_equal(copy_state(m[2]), sn)   # _u, _v (power iteration) and the original weight untouched


# ---------------------------------------------------------------- 9. torch.compile
def test_compiled_model_no_graph_breaks_no_prefix():
    torch.manual_seed(0)
    m = deep_mlp(6); cm = torch.compile(m, backend='eager')
    x = torch.randn(32, 20)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        rep = lsuv_init(cm, x)
    assert not [w for w in ws if 'dynamo' in str(w.message).lower() or 'graph break' in str(w.message).lower()]
    assert rep.df.name.tolist()[0] == '0.0' and set(rep.df.status) == {'ok'}
    assert_meets_targets(m, x, rep)
    torch.testing.assert_close(cm(x), m(x))   # the compiled model computes with the new weights


def test_compiled_model_in_a_learner():
    learn = synth_learner(LSUVCallback())
    learn.model = torch.compile(learn.model, backend='eager')
    quiet(learn.fit, 1, 1e-3)
    assert set(learn.lsuv.report.df.status) == {'ok'} and learn.lsuv.report.df.name[0] == '0.0'


# ---------------------------------------------------------------- 10. mean=None
def test_mean_none_leaves_biases_bit_identical():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8*6, 4))
    biases = {k: v.clone() for k, v in m.state_dict().items() if k.endswith('bias')}
    x = torch.randn(32, 2, 10)
    rep, _ = run_lsuv(m, x, mean=None)
    assert set(rep.df.status) == {'ok'}
    assert state_equal(biases, {k: v for k, v in m.state_dict().items() if k.endswith('bias')})
    assert_meets_targets(m, x, rep, mean=None)


def test_mean_none_with_a_wide_bias_spread_cannot_reach_the_std():
    "With the bias left alone, a bias that spreads the channels more than the target std cannot be undone"
    m = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad(): m[0].bias.copy_(torch.tensor([-3., -1., 1., 3.]))
    rep, ws = run_lsuv(m, torch.randn(64, 4), mean=None)
    assert rep.df.status.tolist() == ['not converged'] and rep.df.std_after[0] > 2
    assert any('did not reach the target' in w for w in ws)


# ---------------------------------------------------------------- more of the same kind
def test_tabular_learner():
    learn = tabular_learner_of(LSUVCallback())
    quiet(learn.fit, 1, 1e-3)
    assert set(learn.lsuv.report.df.status) == {'ok'} and len(learn.lsuv.report.df) == 3


def test_mixed_precision_learner_initializes_in_full_precision():
    learn = synth_learner(LSUVCallback()).to_fp16()
    quiet(learn.fit, 1, 1e-3)
    assert set(learn.lsuv.report.df.status) == {'ok'} and next(learn.model.parameters()).dtype == torch.float32


def test_lstm_model_in_plain_pytorch():
    class LSTMNet(nn.Module):
        def __init__(self): super().__init__(); self.rnn, self.head = nn.LSTM(5, 16, batch_first=True), nn.Linear(16, 3)
        def forward(self, x): return self.head(self.rnn(x)[0][:, -1])
    torch.manual_seed(0); m = LSTMNet(); x = torch.randn(16, 7, 5)
    snap = snapshot(m)
    rep, _ = run_lsuv(m, x)
    assert rep.df.status.tolist() == ['ok']
    assert_same_snapshot(snap, m); assert_meets_targets(m, x, rep)
