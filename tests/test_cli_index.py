"""`m3embed index` and `m3embed search`: build, query with the remembered model, errors."""

import json

import pytest
from helpers import tiny_checkpoint
from typer.testing import CliRunner

from m3embed import M3Model
from m3embed.cli import app
from m3embed.index import M3Index

runner = CliRunner()
DOCS = [("a1", "Paris is the capital of France"), ("a2", "Berlin is in Germany"), ("a3", "Rivers flow to the sea"),
        ("a4", "Coffee is brewed from beans"), ("a5", "The Alps are mountains")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("cli"), colbert_dim=8, seed=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    f = tmp_path_factory.mktemp("c") / "corpus.jsonl"
    f.write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS))
    return f


def test_index_then_search(ckpt, corpus, tmp_path):
    out = tmp_path / "idx"
    r = runner.invoke(app, ["index", str(corpus), str(out), "--model", str(ckpt), "--multivec", "int8"])
    assert r.exit_code == 0, r.output
    assert "indexed 5 passages" in r.output
    idx = M3Index.open(out)
    assert idx.multivec.codec == "int8" and idx.fingerprint["name"] == str(ckpt)
    r = runner.invoke(app, ["search", str(out), "capital of France", "-k", "3", "--mode", "all"])  # model from manifest
    assert r.exit_code == 0, r.output
    expect = idx.search(["capital of France"], k=3, mode="all", model=M3Model.from_pretrained(ckpt))[0]
    lines = [ln for ln in r.output.splitlines() if any(h.id in ln for h in expect)]
    assert [next(h.id for h in expect if h.id in ln) for ln in lines] == [h.id for h in expect]
    assert f"{expect[0].score:.4f}" in r.output and "rank" in r.output
    for bad in ("1,2", "1,-1,1", "0,0,0"):
        r = runner.invoke(app, ["search", str(out), "rivers", "-k", "2", "--mode", "sparse", "--weights", bad])
        assert r.exit_code != 0 and "three numbers" in r.output, bad


def test_cli_errors(ckpt, corpus, tmp_path):
    r = runner.invoke(app, ["index", str(corpus), str(tmp_path / "x"), "--model", str(ckpt), "--multivec", "fp8"])
    assert r.exit_code != 0 and "fp8" in r.output
    r = runner.invoke(app, ["index", str(tmp_path / "none.jsonl"), str(tmp_path / "x"), "--model", str(ckpt)])
    assert r.exit_code == 2 and "no such corpus file" in r.output
    r = runner.invoke(app, ["search", str(tmp_path / "missing"), "q"])
    assert r.exit_code == 2 and "no such index directory" in r.output
    out = tmp_path / "idx"
    assert runner.invoke(app, ["index", str(corpus), str(out), "-m", str(ckpt), "--multivec", "none"]).exit_code == 0
    r = runner.invoke(app, ["search", str(out), "q", "--mode", "multivec"])
    assert r.exit_code == 2 and "multivec='none'" in r.output
    r = runner.invoke(app, ["search", str(out), "", "--mode", "dense"])
    assert r.exit_code == 2 and "empty" in r.output
    other = tiny_checkpoint(tmp_path / "other", colbert_dim=8, seed=5)
    r = runner.invoke(app, ["search", str(out), "Paris", "-k", "2"])  # no token vectors: dense+sparse by default
    assert r.exit_code == 0 and "dense+sparse" in r.output
    r = runner.invoke(app, ["search", str(out), "Paris", "--model", str(other)])
    assert r.exit_code == 3 and "not the model the index was built with" in r.output
    r = runner.invoke(app, ["index", str(corpus), str(out), "-m", str(ckpt)])
    assert r.exit_code == 2 and "not an empty directory" in r.output
