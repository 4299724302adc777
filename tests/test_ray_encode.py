"""Ray engine on a 2-CPU local cluster, 2 workers: outputs equal single-process encode, a worker crash
loses or duplicates no row, reruns skip verified parts and re-encode exactly the damaged ones."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from helpers import shared_dir, tiny_checkpoint

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from m3embed import M3Model  # noqa: E402
from m3embed.distributed import EncodePool, encode_shards, read_encoded  # noqa: E402
from m3embed.distributed.shards import read_manifest  # noqa: E402

CORPUS = shared_dir() / "data" / "xquad_r" / "paragraph" / "all_languages" / "corpus.jsonl"
RUN = dict(dense=True, sparse=True, colbert=True, batch_size=16, max_length=256, part_rows=300, show_progress=False)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, logging_level=logging.WARNING,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2,640 XQuAD-R paragraphs as shards a.jsonl (1,000, with a blank line), c.parquet (640, row groups
    of 200) and sub/b.jsonl (1,000); output order is the sorted shard order a, c, sub/b."""
    root = tmp_path_factory.mktemp("ray-encode")
    docs = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(docs) == 2640
    shards = root / "shards"
    (shards / "sub").mkdir(parents=True)
    for name, chunk in (("a.jsonl", docs[:1000]), ("sub/b.jsonl", docs[1000:2000])):
        with open(shards / name, "w", encoding="utf-8") as f:
            for i, d in enumerate(chunk):
                f.write(json.dumps(d, ensure_ascii=False) + "\n" + ("\n" if i == 10 else ""))
    tail = docs[2000:]
    pq.write_table(pa.table({"_id": [d["_id"] for d in tail], "text": [d["text"] for d in tail]}),
                   shards / "c.parquet", row_group_size=200)
    order = docs[:1000] + docs[2000:] + docs[1000:2000]
    ckpt = tiny_checkpoint(root / "ckpt")
    return {"shards": shards, "ids": [d["_id"] for d in order], "texts": [d["text"] for d in order], "ckpt": ckpt}


def _collect(out_dir):
    parts = list(read_encoded(out_dir))
    return parts, [i for p in parts for i in p.ids]


def _assert_same_parts(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.ids == y.ids
        np.testing.assert_array_equal(x.output.dense, y.output.dense)
        np.testing.assert_array_equal(x.output.lexical.weights, y.output.lexical.weights)
        np.testing.assert_array_equal(x.output.colbert.data, y.output.colbert.data)


@pytest.fixture(scope="module")
def pool(cluster, data):
    """2 workers × 1 thread, kept for the whole module (each run would otherwise start them again)."""
    with EncodePool(str(data["ckpt"]), workers=2, threads_per_worker=1) as p:
        yield p


@pytest.fixture(scope="module")
def reference(pool, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    res = encode_shards(data["shards"], out, None, pool=pool, **RUN)
    assert (res.workers, res.threads_per_worker, res.parts_encoded, res.parts_skipped) == (2, 1, 11, 0)
    assert res.rows_encoded == res.rows_total == 2640
    return out, res, _collect(out)[0]


def test_two_workers_equal_single_process(data, reference):
    _, res, parts = reference
    ids = [i for p in parts for i in p.ids]
    assert ids == data["ids"] and len(set(ids)) == 2640  # every row once, in input order
    model = M3Model.from_pretrained(data["ckpt"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: and a shared 2-core machine is no place for 2 spinning threads
    try:
        _compare_single_process(model, data, res, parts)
    finally:
        torch.set_num_threads(threads)


def _compare_single_process(model, data, res, parts):
    single = model.encode(data["texts"], batch_size=16, max_length=256, return_dense=True, return_sparse=True,
                          return_colbert=True)
    got_dense = np.concatenate([p.output.dense for p in parts])
    np.testing.assert_array_equal(np.concatenate([p.output.n_tokens for p in parts]), single.n_tokens)
    assert np.abs(got_dense - single.dense).max() <= 1e-6
    got_col = np.concatenate([p.output.colbert.data for p in parts])
    np.testing.assert_array_equal(np.concatenate([p.output.colbert.lengths for p in parts]), single.colbert.lengths)
    assert np.abs(got_col - single.colbert.data).max() <= 1e-6
    got_ids = np.concatenate([p.output.lexical.ids for p in parts])
    got_w = np.concatenate([p.output.lexical.weights for p in parts])
    np.testing.assert_array_equal(got_ids, single.lexical.ids)
    assert np.abs(got_w - single.lexical.weights).max() <= 1e-6 * max(1.0, float(np.abs(single.lexical.weights).max()))
    assert res.tokens_encoded == int(single.n_tokens.sum())
    # the same batching (one encode call per part) with the workers' thread count is bitwise equal
    for p in (parts[0], parts[5], parts[10]):  # one part of each shard
        mine = model.encode(p.texts, batch_size=16, max_length=256, return_dense=True, return_sparse=True,
                            return_colbert=True)
        np.testing.assert_array_equal(p.output.dense, mine.dense)
        np.testing.assert_array_equal(p.output.lexical.weights, mine.lexical.weights)
        np.testing.assert_array_equal(p.output.colbert.data, mine.colbert.data)


def test_worker_crash_mid_part_loses_and_duplicates_nothing(pool, data, reference, tmp_path):
    marker = tmp_path / "crashed"
    res = encode_shards(data["shards"], tmp_path / "out", None, pool=pool, _crash=(str(marker), 5), **RUN)
    assert marker.exists()  # a worker os._exit()ed in the middle of a part (after its 5th batch) ...
    assert res.worker_restarts >= 1  # ... and Ray replaced it (a new pid behind the same actor)
    assert res.parts_encoded == 11 and res.rows_encoded == 2640
    parts, ids = _collect(tmp_path / "out")
    assert ids == data["ids"] and len(set(ids)) == len(ids)
    assert sorted(f.name for f in (tmp_path / "out" / "parts").iterdir()) == sorted(
        (tmp_path / "out" / e["file"]).name for e in read_manifest(tmp_path / "out")["parts"].values())
    _assert_same_parts(parts, reference[2])


class _Stop(Exception):
    pass


def test_rerun_skips_verified_parts_and_reencodes_damaged_ones(pool, data, reference, tmp_path):
    out = tmp_path / "out"
    seen = []

    def stop_after_three(r):
        seen.append(r["key"])
        if len(seen) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        encode_shards(data["shards"], out, None, pool=pool, on_part=stop_after_three, **RUN)
    m = read_manifest(out)
    done = len(m["parts"])
    assert done >= 3 and not m["complete"] and len(m["plan"]) == 11
    with pytest.raises(Exception, match="not finished"):
        _collect(out)
    res = encode_shards(data["shards"], out, None, pool=pool, **RUN)
    assert (res.parts_skipped, res.parts_encoded) == (done, 11 - done)
    # all verified: nothing to encode, no worker started
    res = encode_shards(data["shards"], out, None, pool=pool, **RUN)
    assert (res.parts_skipped, res.parts_encoded, res.workers) == (11, 0, 0)
    # one byte flipped (same size: only the sha256 sees it) → exactly that part is encoded again
    m = read_manifest(out)
    victim = out / m["parts"][m["plan"][4]]["file"]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    res = encode_shards(data["shards"], out, None, pool=pool, **RUN)
    assert (res.parts_skipped, res.parts_encoded, res.rows_encoded) == (10, 1, 300)
    parts, ids = _collect(out)
    assert ids == data["ids"]
    _assert_same_parts(parts, reference[2])
    # other settings are refused (before any work), unless overwrite=True
    with pytest.raises(ValueError, match=r"other settings \(max_length: 256 → 128\)"):
        encode_shards(data["shards"], out, None, pool=pool, **{**RUN, "max_length": 128})
