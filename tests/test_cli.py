"""The `m3embed encode` command: inputs, outputs and errors."""

import base64
import json

import numpy as np
import pytest
from helpers import tiny_checkpoint
from typer.testing import CliRunner

from m3embed import M3Model
from m3embed.cli import app

runner = CliRunner()
TEXTS = ["first line", "zweite Zeile ", "第三行", "🙂"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("cli"), colbert_dim=8, seed=2)


def test_txt_to_npz_equals_library(ckpt, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.npz"
    r = runner.invoke(app, ["encode", str(src), str(out), "--model", str(ckpt), "--colbert", "--max-length", "16"])
    assert r.exit_code == 0, r.output
    z = np.load(out)
    lib = M3Model.from_pretrained(ckpt).encode(TEXTS, max_length=16, return_sparse=True, return_colbert=True)
    np.testing.assert_allclose(z["dense"], lib.dense, atol=1e-6)
    np.testing.assert_allclose(z["colbert_data"], lib.colbert.data, atol=1e-6)
    np.testing.assert_array_equal(z["colbert_offsets"], lib.colbert.offsets)
    csr = lib.sparse_csr()
    np.testing.assert_array_equal(z["sparse_indptr"], csr.indptr)
    np.testing.assert_array_equal(z["sparse_indices"], csr.indices)
    np.testing.assert_allclose(z["sparse_data"], csr.data, atol=1e-6)


def test_jsonl_to_jsonl_with_base64_colbert(ckpt, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS)) + "\n\n")
    out = tmp_path / "out.jsonl"
    r = runner.invoke(app, ["encode", str(src), str(out), "-m", str(ckpt), "--colbert"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(TEXTS)
    lib = M3Model.from_pretrained(ckpt).encode(TEXTS, return_sparse=True, return_colbert=True)
    for i, row in enumerate(rows):
        c = row["colbert"]
        mat = np.frombuffer(base64.b64decode(c["data"]), dtype=c["dtype"]).reshape(c["shape"])
        np.testing.assert_allclose(mat, lib.colbert[i], atol=2e-3)  # float16 on the wire
        assert row["lexical_weights"] == pytest.approx(lib.lexical_weights[i])
        np.testing.assert_allclose(row["dense"], lib.dense[i], atol=1e-6)


def test_bad_jsonl_names_file_and_line(ckpt, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"text": 5}\n')
    r = runner.invoke(app, ["encode", str(src), str(tmp_path / "o.npz"), "-m", str(ckpt)])
    assert r.exit_code == 2 and "bad.jsonl:2" in r.output
    src.write_text('{"text": "ok"}\nnot json\n')
    r = runner.invoke(app, ["encode", str(src), str(tmp_path / "o.npz"), "-m", str(ckpt)])
    assert r.exit_code == 2 and "bad.jsonl:2: not valid JSON" in r.output
    assert not (tmp_path / "o.npz").exists()


def test_errors_for_model_output_and_truncation(ckpt, tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("word " * 100)
    monkeypatch.setenv("M3EMBED_MODEL", str(tmp_path / "env-model"))  # the env var is used when --model is absent
    r = runner.invoke(app, ["encode", str(src), str(tmp_path / "o.npz")])
    assert r.exit_code == 2 and "env-model: no such checkpoint" in r.output
    r = runner.invoke(app, ["encode", str(src), str(tmp_path / "o.csv"), "-m", str(ckpt)])
    assert r.exit_code != 0 and ".npz or .jsonl" in r.output
    r = runner.invoke(app, ["encode", str(src), str(tmp_path / "o.npz"), "-m", str(ckpt), "--max-length", "16",
                            "--no-truncate"])
    assert r.exit_code == 2 and "index 0" in r.output
    r = runner.invoke(app, ["encode", str(src), str(tmp_path / "o.npz"), "-m", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such checkpoint" in r.output
