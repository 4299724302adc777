"""M3Index storage: add / delete / save / reopen, generations, corruption detection, the writer lock."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m3embed.index import IndexCorruptError, IndexLockedError, M3Index, ModelMismatchError
from m3embed.index.storage import MANIFEST, gen_name
from m3embed.output import ColbertVectors, LexicalWeights, M3Output

FP = {"name": "fake", "hash": "abc", "hidden_size": 8, "colbert_dim": 4, "vocab_size": 50}


def fake_output(n: int, seed: int, *, hidden=8, colbert=4, vocab=50) -> M3Output:
    """Random unit dense vectors, 1-5 lexical weights and 1-6 ColBERT rows per text."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, hidden)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    nnz = rng.integers(1, 6, n)
    ids = np.concatenate([rng.choice(np.arange(4, vocab), k, replace=False) for k in nnz]).astype(np.int64)
    lex = LexicalWeights(np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64), ids,
                         rng.uniform(0.01, 1, len(ids)).astype(np.float32), vocab)
    rows = rng.integers(1, 7, n)
    data = rng.standard_normal((rows.sum(), colbert)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return M3Output(dense=dense, lexical=lex, colbert=ColbertVectors(data, np.concatenate([[0], np.cumsum(rows)])))


def make(path, n=20, seed=0, **opts) -> M3Index:
    idx = M3Index.create(path, FP, **opts)
    idx.add([f"d{i}" for i in range(n)], fake_output(n, seed), texts=[f"text {i}" for i in range(n)],
            metadata=[{"i": i} for i in range(n)])
    idx.save()
    return idx


def ids_of(hits):
    return [[h.id for h in per] for per in hits]


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "residual"])
def test_add_delete_save_reopen(tmp_path, codec):
    idx = make(tmp_path / "i", multivec=codec, centroids=4)
    q = fake_output(3, 99)
    before = {m: ids_of(idx.search(q, k=5, mode=m)) for m in ("dense", "sparse", "multivec", "all", "rrf")}
    idx.close()
    ro = M3Index.open(tmp_path / "i")
    assert len(ro) == 20 and ro.ids == [f"d{i}" for i in range(20)]
    for m, hits in before.items():
        assert ids_of(ro.search(q, k=5, mode=m)) == hits
    with pytest.raises(PermissionError, match="read-only"):
        ro.add(["x"], fake_output(1, 1))

    w = M3Index.open(tmp_path / "i", writable=True)
    victim = before["dense"][0][0]
    w.delete([victim])
    w.add([f"n{i}" for i in range(5)], fake_output(5, 7), texts=None)
    assert len(w) == 24 and victim not in w
    for m in ("dense", "sparse", "multivec", "dense+sparse", "all", "rrf"):
        assert all(victim not in per for per in ids_of(w.search(q, k=30, mode=m)))
    w.save()
    w.close()
    ro = M3Index.open(tmp_path / "i")
    assert len(ro) == 24 and "n3" in ro and victim not in ro
    hits = ro.search(q, k=30, mode="dense")
    assert all(victim not in per for per in ids_of(hits))
    assert len(hits[0]) == 24  # k > live docs: every live doc once
    n3 = next(h for h in hits[0] if h.id == "n3")
    assert n3.text is None  # added without text
    d1 = next(h for h in hits[0] if h.id == "d1" and h.id != victim) if victim != "d1" else None
    if d1 is not None:
        assert d1.text == "text 1" and d1.metadata == {"i": 1}
    # exactly one generation on disk after commits
    assert sorted(p.name for p in (tmp_path / "i").iterdir() if p.name.startswith("gen-")) == [gen_name(2)]


def test_in_memory_open_matches_memory_map(tmp_path):
    make(tmp_path / "i", multivec="residual", centroids=4).close()
    q = fake_output(3, 9)
    mapped, loaded = M3Index.open(tmp_path / "i"), M3Index.open(tmp_path / "i", in_memory=True)
    assert isinstance(mapped.dense.vectors, np.memmap) and not isinstance(loaded.dense.vectors, np.memmap)
    for m in ("dense", "sparse", "all", "rrf"):
        assert ids_of(mapped.search(q, k=6, mode=m)) == ids_of(loaded.search(q, k=6, mode=m))


def test_add_matches_single_build(tmp_path):
    """Adding in three batches (with saves in between) gives the same results as one batch."""
    out = fake_output(30, 3)
    one = M3Index.create(tmp_path / "one", FP, multivec="fp32")
    one.add([f"d{i}" for i in range(30)], out)
    inc = M3Index.create(tmp_path / "inc", FP, multivec="fp32")
    for a, b in ((0, 7), (7, 20), (20, 30)):
        sl = slice(a, b)
        part = M3Output(dense=out.dense[sl],
                        lexical=LexicalWeights(out.lexical.indptr[a:b + 1] - out.lexical.indptr[a],
                                               out.lexical.ids[out.lexical.indptr[a]:out.lexical.indptr[b]],
                                               out.lexical.weights[out.lexical.indptr[a]:out.lexical.indptr[b]], 50),
                        colbert=ColbertVectors(out.colbert.data[out.colbert.offsets[a]:out.colbert.offsets[b]],
                                               out.colbert.offsets[a:b + 1] - out.colbert.offsets[a]))
        inc.add([f"d{i}" for i in range(a, b)], part)
        inc.save()
    q = fake_output(4, 5)
    for m in ("dense", "sparse", "multivec", "dense+sparse", "all", "rrf"):
        assert ids_of(inc.search(q, k=8, mode=m)) == ids_of(one.search(q, k=8, mode=m))
    inc.close()
    re = M3Index.open(tmp_path / "inc")
    assert len(re.multivec.segments) == 3
    assert ids_of(re.search(q, k=8, mode="all")) == ids_of(one.search(q, k=8, mode="all"))


def test_compact_drops_deleted_rows(tmp_path):
    idx = make(tmp_path / "i", n=12, multivec="int8")
    q = fake_output(2, 11)
    idx.delete(["d0", "d5", "d6"])
    expect = {m: ids_of(idx.search(q, k=20, mode=m)) for m in ("dense", "sparse", "all")}
    idx.compact()
    assert idx.n_rows == 9 and len(idx) == 9
    for m, e in expect.items():
        assert ids_of(idx.search(q, k=20, mode=m)) == e
    idx.close()
    re = M3Index.open(tmp_path / "i")
    assert re.n_rows == 9
    assert ids_of(re.search(q, k=20, mode="all")) == expect["all"]


def test_temporary_index_is_removed(tmp_path):
    idx = M3Index.create(None, FP)
    root = idx.root
    idx.add(["a"], fake_output(1, 0))
    idx.save()
    assert (root / MANIFEST).is_file()
    idx.close(discard=True)
    assert not root.exists()


# ---------------------------------------------------------------------------- corruption
def _corrupt_cases():
    def truncate(gen: Path, m):
        f = gen / "dense.npy"
        f.write_bytes(f.read_bytes()[:-16])

    def flip(gen: Path, m):
        f = gen / "sparse.doc_weights.npy"
        b = bytearray(f.read_bytes())
        b[-3] ^= 0x40
        f.write_bytes(bytes(b))

    def missing(gen: Path, m):
        (gen / "mv.00000.data.npy").unlink()

    def manifest_count(gen: Path, m):
        m["count"] = 21  # files hold 20 rows
        (gen.parent / MANIFEST).write_text(json.dumps(m))

    def manifest_version(gen: Path, m):
        m["format_version"] = 99
        (gen.parent / MANIFEST).write_text(json.dumps(m))

    def manifest_garbage(gen: Path, m):
        (gen.parent / MANIFEST).write_text('{"format": "m3embed-index", "format_ver')

    def manifest_missing(gen: Path, m):
        (gen.parent / MANIFEST).unlink()

    def manifest_dims(gen: Path, m):
        m["model"]["hidden_size"] = 16  # dense.npy holds 8-d vectors
        (gen.parent / MANIFEST).write_text(json.dumps(m))

    return {"truncated": (truncate, "truncated"), "flipped": (flip, "sha256"), "missing": (missing, "missing"),
            "count": (manifest_count, "manifest"), "version": (manifest_version, "format version"),
            "garbage": (manifest_garbage, "not valid JSON"), "no-manifest": (manifest_missing, "not an m3embed index"),
            "dims": (manifest_dims, "dense.npy")}


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corruption_is_detected(tmp_path, case):
    make(tmp_path / "i").close()
    m = json.loads((tmp_path / "i" / MANIFEST).read_text())
    gen = tmp_path / "i" / gen_name(m["generation"])
    fn, msg = _corrupt_cases()[case]
    fn(gen, m)
    with pytest.raises(IndexCorruptError, match=msg):
        M3Index.open(tmp_path / "i")


def test_size_check_without_checksums(tmp_path):
    make(tmp_path / "i").close()
    m = json.loads((tmp_path / "i" / MANIFEST).read_text())
    f = tmp_path / "i" / gen_name(m["generation"]) / "sparse.doc_weights.npy"
    b = bytearray(f.read_bytes())
    b[-3] ^= 0x40
    f.write_bytes(bytes(b))
    M3Index.open(tmp_path / "i", verify=False)  # same size: only the sha256 would tell
    with open(f, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(IndexCorruptError, match="bytes"):
        M3Index.open(tmp_path / "i", verify=False)


def test_failed_save_leaves_previous_generation(tmp_path, monkeypatch):
    idx = make(tmp_path / "i")
    q = fake_output(2, 4)
    before = ids_of(idx.search(q, k=5, mode="all"))
    idx.add(["new"], fake_output(1, 8))
    from m3embed.index import storage

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "atomic_write", boom)  # dies right before the manifest switch
    with pytest.raises(OSError, match="disk full"):
        idx.save()
    monkeypatch.undo()
    assert "new" not in idx and len(idx) == 20  # the object went back to the committed state too
    ro = M3Index.open(tmp_path / "i")
    assert len(ro) == 20 and "new" not in ro
    assert ids_of(ro.search(q, k=5, mode="all")) == before
    idx.close()


def test_crash_mid_write_leaves_previous_index(tmp_path):
    """A writer killed while writing a generation: the old index opens; the next writer cleans up."""
    make(tmp_path / "i").close()
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_index_storage import fake_output
from m3embed.index import M3Index
from m3embed.index import storage
idx = M3Index.open({str(tmp_path / "i")!r}, writable=True)
idx.add(["x%d" % i for i in range(50)], fake_output(50, 1))
real = storage.Staging.write_array
def die(self, name, arr):
    real(self, name, arr)
    if name.startswith("sparse"):
        os._exit(3)   # simulated crash: no cleanup, no commit
storage.Staging.write_array = die
idx.save()
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert list((tmp_path / "i").glob(".staging-*"))  # the crash left its staging directory
    ro = M3Index.open(tmp_path / "i")
    assert len(ro) == 20 and "x0" not in ro
    w = M3Index.open(tmp_path / "i", writable=True)
    assert not list((tmp_path / "i").glob(".staging-*"))
    w.close()


# ---------------------------------------------------------------------------- lock
def test_second_writer_gets_a_clear_error(tmp_path):
    w = make(tmp_path / "i")
    with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
        M3Index.open(tmp_path / "i", writable=True)
    M3Index.open(tmp_path / "i")  # readers are never blocked
    w.close()
    M3Index.open(tmp_path / "i", writable=True).close()  # released


def test_lock_held_by_another_process(tmp_path):
    make(tmp_path / "i").close()
    script = f"""
import sys, time
from m3embed.index import M3Index
idx = M3Index.open({str(tmp_path / "i")!r}, writable=True)
print("locked", flush=True)
time.sleep(30)
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError, match="locked by another writer"):
            M3Index.open(tmp_path / "i", writable=True)
    finally:
        p.kill()
        p.wait()
    M3Index.open(tmp_path / "i", writable=True).close()  # the kernel dropped the dead writer's lock


def test_create_refuses_non_empty_directory(tmp_path):
    make(tmp_path / "i").close()
    with pytest.raises(ValueError, match="not empty"):
        M3Index.create(tmp_path / "i", FP)


def test_mismatched_dimensions(tmp_path):
    idx = make(tmp_path / "i")
    with pytest.raises(ModelMismatchError, match="8-d"):
        idx.add(["z"], fake_output(1, 0, hidden=16))
    with pytest.raises(ModelMismatchError, match="4-d"):
        idx.add(["z"], fake_output(1, 0, colbert=6))
    with pytest.raises(ModelMismatchError, match="50"):
        idx.add(["z"], fake_output(1, 0, vocab=60))
    with pytest.raises(ModelMismatchError, match="8-d"):
        idx.search(fake_output(1, 0, hidden=16), k=3, mode="dense")
    assert len(idx) == 20 and "z" not in idx
    idx.close()
