"""Ray engine end to end: ``M3Index.build(engine="ray")``, ``from_encoded`` / ``M3Index.ingest``, and
``m3embed encode --engine ray`` (resume, and a clear error for an unreachable cluster)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import shared_dir, tiny_checkpoint
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from m3embed import M3Model  # noqa: E402
from m3embed.cli import app  # noqa: E402
from m3embed.distributed import EncodePool, encode_shards  # noqa: E402
from m3embed.index import M3Index, ModelMismatchError  # noqa: E402

CORPUS = shared_dir() / "data" / "xquad_r" / "paragraph" / "all_languages" / "corpus.jsonl"
RUN = {"part_rows": 100, "show_progress": False}


@pytest.fixture(scope="module")
def cluster():
    # 4 logical CPUs: the module's pool holds 2 while the CLI test starts 2 more workers of its own (only one of
    # them encodes at a time)
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=96 * 2**20, logging_level=logging.WARNING,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """400 paragraphs (with a title on every 7th) in two .jsonl shards, the same as one corpus file."""
    root = tmp_path_factory.mktemp("ray-index")
    docs = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()][::6][:400]
    for i, d in enumerate(docs):
        if i % 7 == 0:
            d["title"] = f"Title {i}"
    (root / "shards").mkdir()
    for name, chunk in (("part-0.jsonl", docs[:200]), ("part-1.jsonl", docs[200:])):
        (root / "shards" / name).write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in chunk))
    (root / "corpus.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    ckpt = tiny_checkpoint(root / "ckpt")
    return {"root": root, "shards": root / "shards", "corpus": root / "corpus.jsonl", "ckpt": ckpt,
            "model": M3Model.from_pretrained(ckpt), "ids": [d["_id"] for d in docs]}


@pytest.fixture(scope="module")
def pool(cluster, data):
    with EncodePool(data["model"], workers=2, threads_per_worker=1) as p:
        yield p


@pytest.fixture(scope="module")
def local(data, tmp_path_factory):
    """The same corpus indexed in this process (the reference for every Ray-built index)."""
    idx = M3Index.build(data["corpus"], data["model"], tmp_path_factory.mktemp("local") / "idx", show_progress=False)
    yield idx
    idx.close()


QUERIES = ["Which team won the Super Bowl?", "Wann wurde die Universität gegründet?", "人口は何人ですか"]


def _same_index(a: M3Index, b: M3Index, model) -> None:
    assert a.ids == b.ids
    assert np.abs(np.asarray(a.dense.vectors) - np.asarray(b.dense.vectors)).max() <= 1e-6
    assert [a.docs.get(r) for r in range(0, len(a), 37)] == [b.docs.get(r) for r in range(0, len(b), 37)]
    mode = "all" if a.multivec is not None and b.multivec is not None else "dense+sparse"
    for ha, hb in zip(a.search(QUERIES, k=5, mode=mode, model=model), b.search(QUERIES, k=5, mode=mode, model=model),
                      strict=True):
        assert [h.id for h in ha] == [h.id for h in hb]
        assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-5)


def test_build_with_ray_equals_local_build(pool, data, local, tmp_path):
    model = data["model"]
    dist = M3Index.build(data["shards"], model, tmp_path / "ray", engine="ray", show_progress=False,
                         ray_options={"pool": pool, "part_rows": 100})
    assert len(dist) == 400 and dist.ids == data["ids"]
    _same_index(dist, local, model)
    assert not (tmp_path / "ray.encoded").exists()  # the part outputs are removed after a successful build
    reopened = M3Index.open(tmp_path / "ray")
    _same_index(reopened, local, model)
    for idx in (dist, reopened):
        idx.close()


def test_ingest_and_from_encoded_without_reencoding(pool, data, local, tmp_path):
    model = data["model"]
    enc = tmp_path / "enc"
    res = encode_shards(data["shards"], enc, model, pool=pool, records="corpus", colbert=True, **RUN)
    assert res.parts_encoded == 4 and res.fingerprint["hash"]
    built = M3Index.build(None, model, tmp_path / "from", from_encoded=enc, show_progress=False)
    _same_index(built, local, model)
    with M3Index.create(tmp_path / "ingest", model, multivec="none") as idx:
        assert idx.ingest(enc) == 400
        idx.save()
        _same_index(idx, local, model)
    other = M3Model.from_pretrained(tiny_checkpoint(tmp_path / "other", seed=1))
    with M3Index.create(tmp_path / "mismatch", other) as idx, pytest.raises(ModelMismatchError):
        idx.ingest(enc)
    # an index that stores ColBERT vectors needs a run that encoded them
    dense_only = tmp_path / "enc2"
    encode_shards(data["shards"], dense_only, model, pool=pool, records="corpus", **RUN)
    with M3Index.create(tmp_path / "needs-colbert", model) as idx, pytest.raises(ValueError, match="ColBERT"):
        idx.ingest(dense_only)
    built.close()


def test_cli_encode_with_ray_and_resume(cluster, data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["encode", str(data["shards"]), str(out), "--engine", "ray", "-m", str(data["ckpt"]), "--workers", "1",
            "--threads-per-worker", "2", "--part-rows", "100", "--max-length", "128", "--colbert"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "encoded 400 texts in 4 parts" in r.output and "1 workers × 2 threads" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and len(m["parts"]) == 4 and m["settings"]["max_length"] == 128
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "4 of 4 parts were already done" in r.output and "encoded 0 texts" in r.output
    r = runner.invoke(app, [*args[:-1], "--no-colbert"])
    assert r.exit_code == 2 and "colbert: True → False" in r.output and "--overwrite" in r.output
    r = runner.invoke(app, ["encode", str(data["shards"]), str(tmp_path / "x.npz"), "--engine", "ray"])
    assert r.exit_code == 2 and "output is a directory" in r.output


def test_cli_unreachable_address_is_a_quick_clear_error(data, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "m3embed.cli", "encode", str(data["shards"]), str(tmp_path / "o"),
                        "--engine", "ray", "--address", f"127.0.0.1:{port}", "-m", str(data["ckpt"])],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in p.stderr
    assert time.perf_counter() - t0 < 30  # interpreter start + imports; the connect itself fails at once


def test_a_bad_record_names_its_file_and_line(pool, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.jsonl").write_text('{"_id": "a", "text": "ok"}\n\n{"_id": "b", "text": "ok" \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        encode_shards(tmp_path / "in", tmp_path / "out", None, pool=pool, **RUN)


@pytest.mark.parametrize("codec_sample", [40, 0])
def test_ingest_fits_the_residual_codebook_across_parts(pool, data, tmp_path, monkeypatch, codec_sample):
    """A residual index fed from an encoded run fits its codebook on documents drawn from parts across the
    whole run (10 from each of the 4 parts here), not on the first part only; ``codec_sample=0``: the first part."""
    from m3embed.distributed.shards import read_encoded
    from m3embed.index.multivec import ResidualCodec

    model = data["model"]
    enc = tmp_path / "enc"
    encode_shards(data["shards"], enc, model, pool=pool, records="corpus", colbert=True, **RUN)
    mats = {(p, r): np.asarray(part.output.colbert[r], np.float32)
            for p, part in enumerate(read_encoded(enc)) for r in range(len(part.ids))}
    by_first_row = {m[0].tobytes(): key for key, m in mats.items()}  # contextual vectors: unique per document
    seen = []
    real_fit = ResidualCodec.fit.__func__
    monkeypatch.setattr(ResidualCodec, "fit", classmethod(lambda cls, x, **kw: seen.append(x.copy())
                                                          or real_fit(cls, x, **kw)))
    with M3Index.create(tmp_path / "idx", model, multivec="residual", centroids=8) as idx:
        assert idx.ingest(enc, codec_sample=codec_sample) == 400
        assert len(seen) == 1  # one codebook for every part's segment
        docs, at = [], 0  # the fitted rows, split back into whole documents of the run
        while at < len(seen[0]):
            key = by_first_row[seen[0][at].astype(np.float32).tobytes()]
            np.testing.assert_array_equal(seen[0][at : at + len(mats[key])], mats[key])
            docs.append(key)
            at += len(mats[key])
        if codec_sample:
            assert len(set(docs)) == 40 and [sum(p == k for p, _ in docs) for k in range(4)] == [10, 10, 10, 10]
        else:
            assert docs == [(0, r) for r in range(100)]  # the first part, as add does
        idx.save()
        assert all(len(h) == 5 for h in idx.search(QUERIES, k=5, mode="all", model=model))
    bad = M3Index.create(tmp_path / "bad", model, multivec="residual")
    with bad, pytest.raises(ValueError, match="codec_sample"):
        bad.ingest(enc, codec_sample=-1)
