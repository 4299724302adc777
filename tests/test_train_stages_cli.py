"""Stages (what each trains), fresh heads with colbert_dim, periodic evaluation with the harness."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from train_common import one_thread, tiny_config, write_tiny_train_set  # noqa: F401  (one_thread: autouse fixture)

from m3embed import M3Model
from m3embed.train import ConfigError, M3Trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root, ckpt = write_tiny_train_set(tmp_path_factory.mktemp("stages"))
    return root, ckpt, M3Model.from_pretrained(ckpt)


def _cfg(setup, out, **kw):
    return tiny_config(setup[0], setup[1], out, **kw)


@pytest.mark.parametrize("stage", ["fix_encoder", "dense"])
def test_stages_train_what_they_should(setup, stage):
    before = setup[2].state_dict()
    trainer = M3Trainer(_cfg(setup, f"stage-{stage}", stage=stage, max_steps=1, learning_rate=1e-2),
                        model=copy.deepcopy(setup[2]))
    trainer.train()
    after = trainer.model.state_dict()
    heads = [k for k in before if k.startswith(("colbert_linear", "sparse_linear"))]
    body = ["backbone.encoder.layer.0.attention.self.query.weight", "backbone.embeddings.word_embeddings.weight"]
    heads_moved = any(not torch.equal(before[k], after[k]) for k in heads)
    body_moved = any(not torch.equal(before[k], after[k]) for k in body)
    assert (heads_moved, body_moved) == ((True, False) if stage == "fix_encoder" else (False, True))
    if stage == "dense":
        assert set(trainer.history[0]) >= {"loss", "dense"} and "sparse" not in trainer.history[0]


def test_freeze_patterns_keep_parameters_fixed(setup):
    before = setup[2].state_dict()
    cfg = _cfg(setup, "freeze", stage="fix_encoder", max_steps=1, learning_rate=1e-2, freeze=["colbert_linear.*"])
    trainer = M3Trainer(cfg, model=copy.deepcopy(setup[2]))
    # fix_encoder: the frozen encoder runs without dropout, the heads train
    assert not trainer.model.backbone.training and trainer.model.sparse_linear.training
    trainer.train()
    after = trainer.model.state_dict()
    assert torch.equal(before["colbert_linear.weight"], after["colbert_linear.weight"])
    assert torch.equal(before["colbert_linear.bias"], after["colbert_linear.bias"])
    assert not torch.equal(before["sparse_linear.weight"], after["sparse_linear.weight"])
    with pytest.raises(ConfigError, match=re.escape("freeze: 'colbert.*' matches no parameter")):
        M3Trainer(_cfg(setup, "freeze2", freeze=["colbert.*"]), model=copy.deepcopy(setup[2]))


def test_fresh_heads_with_colbert_dim(setup):
    trainer = M3Trainer(_cfg(setup, "dim", fresh_heads=True, colbert_dim=8, max_steps=1))
    trainer.train()
    loaded = M3Model.from_pretrained(setup[0] / "dim")
    assert loaded.colbert_dim == 8
    with pytest.raises(ConfigError, match="colbert_dim=8 but the model's ColBERT head has 32"):
        M3Trainer(_cfg(setup, "dim2", colbert_dim=8), model=copy.deepcopy(setup[2]))


def test_periodic_evaluation_with_the_harness(setup, tmp_path):
    from beir_toy import write_beir

    beir = write_beir(tmp_path / "beir")
    trainer = M3Trainer(_cfg(setup, "evalrun", max_steps=2, save_steps=1, eval_data=str(beir),
                             eval_modes=["dense", "sparse"]), model=copy.deepcopy(setup[2]))
    trainer.train()
    steps = [r["step"] for r in trainer.eval_history]
    assert steps == [0, 1, 2]  # before training, then at each checkpoint
    for r in trainer.eval_history:
        assert 0.0 <= r["eval/dense/nDCG@10"] <= 1.0 and "eval/sparse/nDCG@10" in r
    log = [json.loads(x) for x in (setup[0] / "evalrun" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval/dense/nDCG@10" in r] == [0, 1, 2]
