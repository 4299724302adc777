"""Loading and saving the bge-m3 layout, and the errors for bad checkpoints."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint

from m3embed import CheckpointError, M3Model
from m3embed.scoring import PAPER_WEIGHTS


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck"), colbert_dim=8, seed=5)


@pytest.fixture
def copy(ckpt, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(ckpt, dst)
    return dst


def test_heads_load_from_fp16_files(ckpt):
    m = M3Model.from_pretrained(ckpt)
    saved = torch.load(ckpt / "colbert_linear.pt", weights_only=True)
    assert saved["weight"].dtype == torch.float16
    assert m.colbert_linear.weight.dtype == torch.float32
    assert torch.equal(m.colbert_linear.weight, saved["weight"].float())
    assert m.colbert_dim == 8 and m.max_positions == 512


@pytest.mark.parametrize("safe", [True, False])
def test_save_then_load_round_trips(ckpt, tmp_path, safe):
    m = M3Model.from_pretrained(ckpt)
    out_dir = tmp_path / "saved"
    m.save_pretrained(out_dir, safe_serialization=safe)
    names = {p.name for p in out_dir.iterdir()}
    assert {"config.json", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt"} <= names
    assert ("model.safetensors" in names) == safe
    assert not [n for n in names if n.startswith(".")]  # no temp files left behind
    m2 = M3Model.from_pretrained(out_dir)
    texts = ["round trip", "ein Test ", "往返"]
    a = m.encode(texts, return_sparse=True, return_colbert=True)
    b = m2.encode(texts, return_sparse=True, return_colbert=True)
    np.testing.assert_array_equal(a.dense, b.dense)
    np.testing.assert_array_equal(a.colbert.data, b.colbert.data)
    assert a.lexical_weights == b.lexical_weights


def test_missing_head_is_an_error_unless_fresh(copy):
    (copy / "sparse_linear.pt").unlink()
    with pytest.raises(CheckpointError, match=r"sparse_linear\.pt: missing head file.*fresh_heads=True"):
        M3Model.from_pretrained(copy)
    m = M3Model.from_pretrained(copy, fresh_heads=True, colbert_dim=12)
    assert m.colbert_dim == 12
    assert m.encode(["x"], return_colbert=True).colbert.data.shape[1] == 12


def test_wrong_head_shape_is_an_error(copy):
    torch.save({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, copy / "sparse_linear.pt")
    with pytest.raises(CheckpointError, match=r"weight shape \[1, 7\] does not match the encoder, expected \[1, 32\]"):
        M3Model.from_pretrained(copy)
    torch.save({"weight": torch.zeros(8, 32)}, copy / "colbert_linear.pt")
    with pytest.raises(CheckpointError, match="'weight' and 'bias'"):
        M3Model.from_pretrained(copy)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_heads_are_loaded_weights_only(copy):
    torch.save({"weight": _Evil(), "bias": torch.zeros(1)}, copy / "sparse_linear.pt")
    with pytest.raises(CheckpointError, match="not a readable torch state dict"):
        M3Model.from_pretrained(copy)


def test_unknown_path_and_non_encoder_config(copy, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        M3Model.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        M3Model.from_pretrained("./relative/missing")
    cfg = json.loads((copy / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2Model"])
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"gpt2.*not a bidirectional encoder"):
        M3Model.from_pretrained(copy)
    (copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        M3Model.from_pretrained(copy)


def test_missing_tokenizer_is_an_error(copy):
    (copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        M3Model.from_pretrained(copy)


def test_hybrid_weights_round_trip_through_m3embed_json(ckpt, tmp_path):
    m = M3Model.from_pretrained(ckpt)
    assert m.hybrid_weights == PAPER_WEIGHTS  # no m3embed.json: the paper's
    out_dir = tmp_path / "w"
    m.save_pretrained(out_dir)
    assert not (out_dir / "m3embed.json").exists()  # the plain bge-m3 layout
    m.hybrid_weights = (0.25, 0.0, 1.0)
    m.save_pretrained(out_dir)
    assert json.loads((out_dir / "m3embed.json").read_text()) == {"hybrid_weights": [0.25, 0.0, 1.0]}
    assert M3Model.from_pretrained(out_dir).hybrid_weights == (0.25, 0.0, 1.0)
    m.hybrid_weights = PAPER_WEIGHTS  # back to the paper's: the stale file goes
    m.save_pretrained(out_dir)
    assert not (out_dir / "m3embed.json").exists()
    assert M3Model.from_pretrained(out_dir).hybrid_weights == PAPER_WEIGHTS


@pytest.mark.parametrize("content", ['{"hybrid_weights": [1, 0.3]}', '{"hybrid_weights": [1, -0.3, 1]}',
                                     '{"hybrid_weights": [0, 0, 0]}', '{"hybrid_weights": [1, NaN, 1]}',
                                     '{"weights": [1, 1, 1]}', "[1, 0.3, 1]", "{not json"])
def test_bad_m3embed_json_is_an_error_naming_the_file(copy, content):
    (copy / "m3embed.json").write_text(content)
    with pytest.raises(CheckpointError, match=r"m3embed\.json"):
        M3Model.from_pretrained(copy)
