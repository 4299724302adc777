"""Our unified objective equals FlagEmbedding 1.4.2's M3 fine-tuning loss and gradients on one batch.

``tests/golden/train_loss.json`` holds the inputs and the reference's losses and gradients, written by
``scripts/train_parity.py --write-golden`` (FlagEmbedding 1.4.2, transformers 4.57.6): tiny seeded
checkpoint, dropout 0, unified fine-tuning, temperature 0.02, with and without self-distillation.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, tokenizer_dir
from train_common import one_thread  # noqa: F401  (autouse fixture)

from m3embed import M3Model
from m3embed.train.batching import encode_reps
from m3embed.train.losses import LossConfig, m3_loss

GOLDEN = Path(__file__).parent / "golden" / "train_loss.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("train_parity", REPO / "scripts" / "train_parity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt = mod.build_checkpoint(tmp_path_factory.mktemp("parity") / "ckpt", tokenizer_dir())
    return ckpt, json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", ["self_distill=True", "self_distill=False"])
def test_loss_and_gradients_match_flagembedding(setup, case):
    ckpt, golden = setup
    model = M3Model.from_pretrained(ckpt)
    model.train()  # dropout is 0 in this checkpoint's config
    t = {k: torch.tensor(golden[k]) for k in ("q_ids", "q_mask", "p_ids", "p_mask")}
    q = encode_reps(model, t["q_ids"], t["q_mask"])
    p = encode_reps(model, t["p_ids"], t["p_mask"])
    cfg = LossConfig(temperature=golden["temperature"], colbert_clamp=True)  # the reference's padded MaxSim
    out = m3_loss(q, p, golden["group_size"], cfg, self_distill=case.endswith("True"))
    out.loss.backward()
    want = golden["cases"][case]
    assert out.loss.item() == pytest.approx(want["loss"], abs=2e-6)
    ours = {"encoder": model.backbone.encoder.layer[0].attention.self.query.weight.grad,
            "colbert_linear": model.colbert_linear.weight.grad, "sparse_linear": model.sparse_linear.weight.grad}
    for name, grad in ours.items():
        ref = torch.tensor(want["grads"][name])
        assert float(ref.abs().max()) > 0, name  # every path carries gradient in this batch
        torch.testing.assert_close(grad, ref, rtol=0, atol=2e-6, msg=lambda m, n=name: f"{n}: {m}")
