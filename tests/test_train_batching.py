"""Split-batch (sub-batches + checkpointing) gives the full-batch loss and gradients; gradients reach
the encoder and both heads."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_checkpoint
from train_common import one_thread, word_texts  # noqa: F401  (one_thread: autouse fixture)

from m3embed import M3Model
from m3embed.train.batching import auto_sub_batch_size, enable_layer_checkpointing, encode_reps, plan_sub_batches
from m3embed.train.data import pad
from m3embed.train.losses import LossConfig, m3_loss

G = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = M3Model.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("ckpt")))
    m.eval()  # dropout off: the two paths must see the same network
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _batch(model, b=2):
    q = model.tokenizer.tokenize(word_texts(b, 1, 2, 6), max_length=16)
    p = model.tokenizer.tokenize(word_texts(b * G, 2, 1, 30), max_length=40)
    qi, qm = pad([torch.tensor(x).numpy() for x in q], model.tokenizer.special.pad)
    pi, pm = pad([torch.tensor(x).numpy() for x in p], model.tokenizer.special.pad)
    return qi, qm, pi, pm


def _loss_and_grads(model, batch, sub, clamp=False, skd=True):
    model.zero_grad(set_to_none=True)
    qi, qm, pi, pm = batch
    q = encode_reps(model, qi, qm, sub_batch_size=sub)
    p = encode_reps(model, pi, pm, sub_batch_size=sub)
    out = m3_loss(q, p, G, LossConfig(temperature=0.05, colbert_clamp=clamp), self_distill=skd)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


def test_gradients_reach_encoder_and_both_heads(model):
    _, grads = _loss_and_grads(model, _batch(model), None)
    for name in ("colbert_linear.weight", "sparse_linear.weight", "backbone.embeddings.word_embeddings.weight",
                 "backbone.encoder.layer.0.attention.self.query.weight",
                 "backbone.encoder.layer.1.output.dense.weight"):
        assert name in grads, name
        assert float(grads[name].abs().sum()) > 0, name


@pytest.mark.parametrize(("sub", "clamp"), [(2, False), (3, True)])
def test_split_batch_equals_full_batch(model, sub, clamp):
    batch = _batch(model)
    full_loss, full = _loss_and_grads(model, batch, None, clamp)
    split_loss, split = _loss_and_grads(model, batch, sub, clamp)
    assert split_loss == pytest.approx(full_loss, rel=1e-6, abs=1e-6)
    assert full.keys() == split.keys()
    worst = max(float((full[k] - split[k]).abs().max()) for k in full)
    assert worst <= 1e-5, worst


def test_sub_batches_are_padded_back_for_colbert(model):
    """Sub-batches of different lengths concatenate (the reference's unified split-batch crashes here)."""
    _, _, pi, pm = _batch(model)
    full = encode_reps(model, pi, pm)
    split = encode_reps(model, pi, pm, sub_batch_size=2)
    assert split.colbert.shape == full.colbert.shape == (pi.shape[0], pi.shape[1] - 1, model.colbert_dim)
    torch.testing.assert_close(split.colbert, full.colbert, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.sparse, full.sparse, atol=1e-5, rtol=1e-5)
    # padded positions stay exactly zero after the round trip
    assert float(split.colbert.detach()[~pm[:, 1:].bool()].abs().max()) == 0.0
    assert float(split.sparse.detach()[~pm.bool()].abs().max()) == 0.0


def test_layerwise_checkpointing_keeps_gradients(model):
    batch = _batch(model)
    loss0, g0 = _loss_and_grads(model, batch, None)
    enable_layer_checkpointing(model)
    try:
        model.backbone.train()  # HF checkpoints layers only in training mode; dropout is switched off below
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        loss1, g1 = _loss_and_grads(model, batch, 2)
    finally:
        off = getattr(model.backbone, "activation_checkpointing_disable", None) or \
            model.backbone.gradient_checkpointing_disable
        off()
        model.eval()
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert max(float((g0[k] - g1[k]).abs().max()) for k in g0) <= 1e-5


def test_sub_batch_plan():
    assert [auto_sub_batch_size(n) for n in (8192, 6000, 5999, 4000, 2500, 1000, 600, 100)] == \
        [1, 1, 2, 3, 5, 9, 16, 32]
    plan = plan_sub_batches([5, 9, 2, 7, 9], 2)
    assert plan == [[1, 4], [3, 0], [2]]  # longest first, ties in input order
    assert plan_sub_batches([5, 9], None) == [[0, 1]]
    assert sorted(i for c in plan_sub_batches([3000] * 4 + [10] * 40, "auto") for i in c) == list(range(44))
    assert [len(c) for c in plan_sub_batches([3000] * 4 + [10] * 40, "auto")] == [3, 3, 32, 6]
