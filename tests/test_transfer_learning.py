"""Transfer learning: LSUV on the new head of a vision_learner-style model leaves the (pretrained) body alone."""
import pytest, torch
from torch import nn
from fastai.vision.all import create_body, create_head, resnet18
from lsuv_fastai.core import lsuv_layers, layer_stats
from lsuv_fastai.test_utils import run_lsuv, assert_meets_targets, copy_state, state_equal

SEED = 7


def body_and_head():
    "What `vision_learner(dls, resnet18)` builds: a cut resnet18 body (random here: stands for pretrained) + new head"
    return nn.Sequential(create_body(resnet18(), n_in=3, pretrained=False), create_head(512, 10))


def head_only(m): return lsuv_layers(m[1])


@pytest.mark.parametrize('train', [True, False])
def test_lsuv_on_head_leaves_body_bitwise_untouched(train):
    m = body_and_head()
    xb = torch.randn(4, 3, 32, 32)
    body0, head0 = copy_state(m[0]), copy_state(m[1])
    body_ids = [id(p) for p in m[0].parameters()]
    with torch.no_grad(): feats0 = m[0].eval()(xb)
    m.train()
    torch.manual_seed(SEED)    # the head has dropout: replay its masks in the re-measurement
    rep, _ = run_lsuv(m, xb, modules=head_only, train=train)
    assert rep.df.name.tolist() == ['1.4', '1.8'] and set(rep.df.status) == {'ok'}
    assert_meets_targets(m, xb, rep, modules=head_only, train=train, seed=SEED)
    # body: weights, BatchNorm running stats and num_batches_tracked bitwise equal, same Parameter objects
    assert state_equal(copy_state(m[0]), body0)
    assert [id(p) for p in m[0].parameters()] == body_ids
    with torch.no_grad(): assert torch.equal(m[0].eval()(xb), feats0)
    # head: its targets changed, its BatchNorm buffers did not
    head1 = copy_state(m[1])
    assert not torch.equal(head1['4.weight'], head0['4.weight']) and not torch.equal(head1['8.weight'], head0['8.weight'])
    assert state_equal({k: v for k, v in head1.items() if 'weight' not in k and 'bias' not in k},
                       {k: v for k, v in head0.items() if 'weight' not in k and 'bias' not in k})


def test_frozen_body_stays_frozen():
    "fastai freezes the body for fine-tuning: requires_grad flags and the head's targets are as expected"
    m = body_and_head()
    for p in m[0].parameters(): p.requires_grad_(False)
    xb = torch.randn(4, 3, 32, 32)
    body0 = copy_state(m[0])
    torch.manual_seed(SEED)
    rep, _ = run_lsuv(m, xb, modules=head_only)
    assert set(rep.df.status) == {'ok'}
    assert not any(p.requires_grad for p in m[0].parameters()) and all(p.requires_grad for p in m[1].parameters())
    assert state_equal(copy_state(m[0]), body0)


def test_head_targets_only_in_layer_stats():
    m = body_and_head()
    st = layer_stats(m, torch.randn(4, 3, 32, 32), modules=head_only)
    assert list(st) == [m[1][4], m[1][8]]
