"""Bad input and failure: NaN loss stops with step and batch (checkpoint intact), all-zero sparse weights
warn, group size 1 explains the collapse, config errors name the option."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from train_common import one_thread, tiny_config, write_tiny_train_set  # noqa: F401  (one_thread: autouse fixture)

from m3embed import M3Model
from m3embed.train import ConfigError, M3Trainer, NonFiniteLossError, TrainConfig
from m3embed.train.config import parse_override


@pytest.fixture(scope="module")
def base_model(setup):
    return M3Model.from_pretrained(setup[1])


def fresh(base_model):
    """A private copy of the loaded tiny model (loading from disk costs seconds on a busy machine)."""
    return copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_tiny_train_set(tmp_path_factory.mktemp("fail"))


def _cfg(setup, out, **kw):
    return tiny_config(*setup, out, **kw)


def test_nan_loss_stops_with_step_and_batch_and_keeps_the_checkpoint(setup):
    def poison(model, step):
        if step == 2:  # right after checkpoint-2 is written
            with torch.no_grad():
                model.sparse_linear.weight.fill_(float("nan"))

    trainer = M3Trainer(_cfg(setup, "nan", max_steps=4, save_steps=2), eval_fn=poison)
    with pytest.raises(NonFiniteLossError) as e:
        trainer.train()
    msg = str(e.value)
    assert "non-finite loss" in msg and "at step 3 (micro-batch 1/1" in msg
    assert "train.jsonl lines" in msg and "checkpoint-2" in msg and "is intact" in msg
    out = setup[0] / "nan"
    assert not (out / "checkpoint-3").exists()
    saved = M3Model.from_pretrained(out / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2] and "error" in log[-1]


def test_all_zero_sparse_weights_are_logged(setup, base_model, caplog):
    model = fresh(base_model)
    with torch.no_grad():
        model.sparse_linear.bias.fill_(-1e4)  # ReLU off everywhere
    with caplog.at_level(logging.WARNING, logger="m3embed.train"):
        M3Trainer(_cfg(setup, "zero", max_steps=1), model=model).train()
    assert "every sparse weight of the batch is 0" in caplog.text and "train.jsonl lines" in caplog.text


def test_group_size_one_explains_the_collapse(setup, base_model, caplog):
    with pytest.raises(ConfigError, match=r"group size 1 with a batch of 1 query.*log\(1\) = 0"):
        M3Trainer(_cfg(setup, "g1", group_size=1, batch_size=1), model=fresh(base_model))
    with pytest.raises(ConfigError, match="group size 1 without in-batch negatives"):
        M3Trainer(_cfg(setup, "g1", group_size=1, in_batch_negatives=False), model=fresh(base_model))
    with caplog.at_level(logging.WARNING, logger="m3embed.train"):
        M3Trainer(_cfg(setup, "g1", group_size=1, batch_size=2), model=fresh(base_model))
    assert "no hard negatives, only in-batch negatives" in caplog.text


# ---------------------------------------------------------------------------- config
def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ntrain_data: a.jsonl\noutput_dir: o\nlearning_rate: 1e-5\nsub_batch_size: auto\n")
    cfg = TrainConfig.from_yaml(path, {"max_steps": 3})
    assert cfg.train_data == ["a.jsonl"] and cfg.learning_rate == 1e-5 and cfg.sub_batch_size == "auto"
    assert cfg.max_steps == 3
    assert parse_override("ensemble_weights=[1, 0.5, 1]") == ("ensemble_weights", [1, 0.5, 1])
    assert parse_override("query-instruction=null") == ("query_instruction", None)
    for bad, msg in (({"learning_rat": 1}, "unknown option 'learning_rat' .*did you mean learning_rate"),
                     ({"stage": "joint"}, "stage: 'joint' is not one of dense, unified, fix_encoder"),
                     ({"group_size": 0}, "group_size: must be >= 1"),
                     ({"batch_size": "big"}, "batch_size: expected an integer"),
                     ({"ensemble_weights": [1, 2]}, "needs 3 numbers"),
                     ({"sub_batch_size": "half"}, "sub_batch_size")):
        with pytest.raises(ConfigError, match=msg):
            TrainConfig.from_yaml(path, bad)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml(path)


