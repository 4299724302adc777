"""m3embed.accel: the fast CPU inference paths (fused fp32, bf16, int8) on a tiny random checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tokenizer_dir

from m3embed import M3Model
from m3embed.accel import PRECISIONS, FastEncoder
from m3embed.testing import build_random_checkpoint

TOKENIZER = tokenizer_dir()  # ../shared beside the repo (or $M3EMBED_SHARED); missing → tests fail loudly

TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France. " * 6,
    "東京は日本の首都です。",
    "x",
    "Mitochondria play a role in programmed cell death in lace plant leaves.",
]
# minimum dense cosine vs the plain fp32 forward, per precision
MIN_COS = {"fp32": 0.999999, "bf16": 0.999, "int8": 0.999}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return build_random_checkpoint(tmp_path_factory.mktemp("accel") / "m", TOKENIZER, layers=2, hidden=64,
                                   heads=4, ffn=256, max_positions=130)


@pytest.fixture(scope="module")
def base(ckpt):
    return M3Model.from_pretrained(ckpt).encode(TEXTS, max_length=128, return_sparse=True, return_colbert=True)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_outputs_close_to_fp32(ckpt, base, precision):
    model = M3Model.from_pretrained(ckpt, precision=precision)
    assert isinstance(model.__dict__.get("_accel"), FastEncoder)
    out = model.encode(TEXTS, max_length=128, return_sparse=True, return_colbert=True)
    assert out.dense.shape == base.dense.shape and out.dense.dtype == np.float32
    cos = np.sum(out.dense * base.dense, axis=1)
    assert cos.min() >= MIN_COS[precision], cos
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    # ColBERT: one unit row per real token but [CLS], same offsets
    np.testing.assert_array_equal(out.colbert.offsets, base.colbert.offsets)
    assert out.colbert.data.shape == base.colbert.data.shape and out.colbert.data.dtype == np.float32
    assert np.sum(out.colbert.data * base.colbert.data, axis=1).min() >= MIN_COS[precision] - 0.01
    # sparse: same texts, positive weights, ids close to the fp32 ones
    assert len(out.lexical) == len(TEXTS) and (out.lexical.weights > 0).all()
    for i in range(len(TEXTS)):
        ids, w = out.lexical.row(i)
        bids, bw = base.lexical.row(i)
        common = dict(zip(bids.tolist(), bw.tolist(), strict=True))
        for t, x in zip(ids.tolist(), w.tolist(), strict=True):
            assert abs(x - common.get(t, 0.0)) < 0.05
    if precision == "fp32":
        np.testing.assert_allclose(out.dense, base.dense, atol=1e-5)
        np.testing.assert_allclose(out.colbert.data, base.colbert.data, atol=1e-5)


def test_fast_path_only_for_inference(ckpt):
    plain = M3Model.from_pretrained(ckpt)
    model = M3Model.from_pretrained(ckpt).optimize("int8")
    state = set(plain.state_dict())
    assert set(model.state_dict()) == state  # nothing registered on the module
    ids = torch.tensor([[0, 35378, 8, 5, 2, 1], [0, 6, 2, 1, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        want = plain.hidden_states(ids, mask)
        fast = model.hidden_states(ids, mask)
    assert fast.shape == want.shape and fast.dtype == torch.float32
    assert not torch.equal(fast, want)  # int8 path taken
    # with autograd on (training), the plain forward runs and gradients flow
    h = model.hidden_states(ids, mask)
    assert torch.equal(h, want) and h.requires_grad


def test_bf16_plain_forward_returns_fp32(ckpt):
    model = M3Model.from_pretrained(ckpt, precision="bf16")
    assert model.backbone.dtype == torch.bfloat16 and model.dtype == torch.float32
    ids = torch.tensor([[0, 35378, 8, 2]])
    h = model.hidden_states(ids, torch.ones_like(ids))  # grad enabled: transformers forward
    assert h.dtype == torch.float32


def test_rejects_bad_precision(ckpt):
    model = M3Model.from_pretrained(ckpt)
    with pytest.raises(ValueError, match="precision"):
        model.optimize("fp8")  # type: ignore[arg-type]


def test_fast_encoder_stops_after_n_layers(ckpt):
    model = M3Model.from_pretrained(ckpt, precision="fp32")
    ids = torch.tensor([[0, 1052, 83, 10, 2], [0, 3293, 2, 1, 1]])
    mask = (ids != 1).long()
    ref = model.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    fast = model.__dict__["_accel"]
    for n in (0, 1):  # after the embeddings, after layer 1 (the ckpt has 2)
        got = fast(ids, mask, n_layers=n)
        torch.testing.assert_close(got[mask.bool()], ref[n][mask.bool()].detach(), atol=2e-5, rtol=0)
    torch.testing.assert_close(fast(ids, mask), fast(ids, mask, n_layers=None))
