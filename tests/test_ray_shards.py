"""Shard discovery, part planning, record reading and part outputs of the Ray engine (no cluster needed)."""

from __future__ import annotations

import itertools
import json
import sys
import time

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from m3embed.distributed.shards import (  # noqa: E402
    EncodedCorruptError,
    EncodeSettings,
    discover_shards,
    entry_problem,
    part_records,
    plan_parts,
    read_part_output,
    sha256_file,
    write_part_output,
)
from m3embed.output import ColbertVectors, LexicalWeights, M3Output  # noqa: E402


def _write_jsonl(path, records, blank_after=()):
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            if i in blank_after:
                f.write("  \n\n")


def test_discovery_directory_glob_file(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.parquet", "sub/c.jsonl", ".hidden.jsonl", "notes.txt"):
        (tmp_path / name).write_text("")
    assert [s.rel for s in discover_shards(tmp_path)] == ["a.parquet", "b.jsonl", "sub/c.jsonl"]
    assert [s.rel for s in discover_shards(str(tmp_path / "*.jsonl"))] == ["b.jsonl"]
    assert [s.rel for s in discover_shards(str(tmp_path / "**" / "*.jsonl"))] == ["b.jsonl", "sub/c.jsonl"]
    assert [s.kind for s in discover_shards(tmp_path / "b.jsonl")] == ["jsonl"]
    with pytest.raises(ValueError, match=r"notes\.txt: unsupported shard type"):
        discover_shards(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="matches no"):
        discover_shards(str(tmp_path / "*.nothing"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        discover_shards(tmp_path / "missing")


def test_jsonl_parts_are_byte_ranges_with_line_numbers(tmp_path):
    recs = [{"_id": f"d{i}", "text": f"text {i}"} for i in range(10)]
    _write_jsonl(tmp_path / "s.jsonl", recs, blank_after={2, 6})
    parts, info = plan_parts(discover_shards(tmp_path), part_rows=4)
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8), (8, 10)]
    assert info["s.jsonl"]["rows"] == 10
    settings = EncodeSettings(part_rows=4)
    got = [part_records(p, settings) for p in parts]
    assert [i for ids, _, _ in got for i in ids] == [r["_id"] for r in recs]
    assert [t for _, texts, _ in got for t in texts] == [r["text"] for r in recs]
    # the byte ranges tile the file
    assert parts[0].byte_start == 0 and parts[-1].byte_stop == (tmp_path / "s.jsonl").stat().st_size
    assert all(a.byte_stop == b.byte_start for a, b in itertools.pairwise(parts))
    # a bad record is reported with its real line number (two blank lines come before it)
    lines = (tmp_path / "s.jsonl").read_text().split("\n")
    bad = lines.index(json.dumps(recs[7]))
    lines[bad] = '{"_id": "d7", "text": 5}'
    (tmp_path / "s.jsonl").write_text("\n".join(lines))
    parts, _ = plan_parts(discover_shards(tmp_path), part_rows=4)
    with pytest.raises(ValueError, match=rf"s\.jsonl:{bad + 1}: field 'text' is int"):
        part_records(parts[1], settings)


def test_plan_cache_is_reused_only_for_an_unchanged_file(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "s.jsonl", [{"text": str(i)} for i in range(5)])
    parts, info = plan_parts(discover_shards(tmp_path), part_rows=2)
    import m3embed.distributed.shards as sh

    def boom(*a):
        raise AssertionError("rescanned")

    monkeypatch.setattr(sh, "_scan_jsonl", boom)
    again, _ = plan_parts(discover_shards(tmp_path), part_rows=2, cache=info)
    assert again == parts
    time.sleep(0.01)
    _write_jsonl(tmp_path / "s.jsonl", [{"text": str(i)} for i in range(6)])
    with pytest.raises(AssertionError, match="rescanned"):
        plan_parts(discover_shards(tmp_path), part_rows=2, cache=info)


def test_generated_ids_and_corpus_records(tmp_path):
    _write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}, {"body": "b", "id": 7}, {"text": "c", "id": 9}])
    parts, _ = plan_parts(discover_shards(tmp_path), part_rows=10)
    with pytest.raises(ValueError, match=r"s\.jsonl:2: expected an object with a 'text' field"):
        part_records(parts[0], EncodeSettings())
    _write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}, {"text": "b", "id": 7}])
    parts, _ = plan_parts(discover_shards(tmp_path), part_rows=10)
    ids, texts, metas = part_records(parts[0], EncodeSettings())
    assert ids == ["s.jsonl:0", "7"] and texts == ["a", "b"] and metas == [None, None]
    # corpus records: M3Index.build's rules (id required, title prepended and kept in metadata)
    _write_jsonl(tmp_path / "s.jsonl", [{"_id": "x", "title": "T", "text": "body", "metadata": {"k": 1}}])
    parts, _ = plan_parts(discover_shards(tmp_path), part_rows=10)
    assert part_records(parts[0], EncodeSettings(records="corpus")) == (["x"], ["T body"], [{"k": 1, "title": "T"}])
    _write_jsonl(tmp_path / "s.jsonl", [{"text": "no id"}])
    parts, _ = plan_parts(discover_shards(tmp_path), part_rows=10)
    with pytest.raises(ValueError, match=r"s\.jsonl:1: no '_id' or 'id' field"):
        part_records(parts[0], EncodeSettings(records="corpus"))


def test_parquet_parts_cross_row_groups(tmp_path):
    n = 23
    table = pa.table({"_id": [f"q{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)],
                      "other": list(range(n))})
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=5)
    parts, _ = plan_parts(discover_shards(tmp_path), part_rows=7)
    assert [(p.start, p.stop) for p in parts] == [(0, 7), (7, 14), (14, 21), (21, 23)]
    ids = [i for p in parts for i in part_records(p, EncodeSettings(part_rows=7))[0]]
    assert ids == [f"q{i}" for i in range(n)]
    with pytest.raises(ValueError, match=r"s\.parquet: no 'body' column"):
        part_records(parts[0], EncodeSettings(field="body"))


def _output(rng, n, h=8, d=4, vocab=50):
    lens = rng.integers(0, 6, n)
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = np.concatenate([rng.choice(vocab, k, replace=False) for k in lens]).astype(np.int64)
    clens = rng.integers(1, 9, n)
    return M3Output(dense=rng.standard_normal((n, h)).astype(np.float32),
                    lexical=LexicalWeights(indptr, ids, rng.random(len(ids)).astype(np.float32), vocab),
                    colbert=ColbertVectors(rng.standard_normal((clens.sum(), d)).astype(np.float32),
                                           np.concatenate([[0], np.cumsum(clens)]).astype(np.int64)),
                    n_tokens=rng.integers(2, 30, n))


def test_part_output_round_trip_is_bitwise_and_checked(tmp_path):
    rng = np.random.default_rng(0)
    out = _output(rng, 17)
    ids = [f"id{i}" for i in range(17)]
    metas = [None] * 16 + [{"title": "é"}]
    path = tmp_path / "parts" / "p.parquet"
    nbytes, sha = write_part_output(path, ids, np.arange(100, 117), out, [f"t{i}" for i in range(17)], metas,
                                    vocab_size=50, hidden_size=8, colbert_dim=4)
    assert nbytes == path.stat().st_size and sha == sha256_file(path)
    assert [f.name for f in path.parent.iterdir()] == ["p.parquet"]  # no temp file left
    back = read_part_output(path)
    assert back.ids == ids and back.rows.tolist() == list(range(100, 117)) and back.metadata == metas
    assert back.texts == [f"t{i}" for i in range(17)]
    np.testing.assert_array_equal(back.output.dense, out.dense)
    np.testing.assert_array_equal(back.output.n_tokens, out.n_tokens)
    for a in ("indptr", "ids", "weights"):
        np.testing.assert_array_equal(getattr(back.output.lexical, a), getattr(out.lexical, a))
    assert back.output.lexical.vocab_size == 50
    np.testing.assert_array_equal(back.output.colbert.data, out.colbert.data)
    np.testing.assert_array_equal(back.output.colbert.offsets, out.colbert.offsets)
    entry = {"file": "parts/p.parquet", "bytes": nbytes, "sha256": sha}
    assert entry_problem(tmp_path, None, entry) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert "sha256 does not match" in entry_problem(tmp_path, None, entry)
    assert entry_problem(tmp_path, None, entry, checksum=False) is None
    path.write_bytes(bytes(data[:-10]))
    assert "truncated" in entry_problem(tmp_path, None, entry)
    with pytest.raises(EncodedCorruptError, match="unreadable part file"):
        read_part_output(path)


def test_missing_ray_names_the_extra(monkeypatch):
    from m3embed.distributed.ray_encode import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"m3embed\[ray\]"):
        require_ray()


def test_unreachable_address_fails_fast():
    from m3embed.distributed.ray_encode import RayConnectError, _probe

    t0 = time.perf_counter()
    with pytest.raises(RayConnectError, match=r"cannot reach a Ray cluster at 198\.51\.100\.1:6379|not a Ray cluster"):
        _probe("198.51.100.1:6379", timeout=1.0)  # TEST-NET-2: not routed (the connect times out), or a proxy answers
    assert time.perf_counter() - t0 < 5
    with pytest.raises(RayConnectError, match="expected 'auto'"):
        _probe("somehost:port", timeout=1.0)
