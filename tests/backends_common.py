"""Shared checks for the vector-database backends (tests/test_backends_*.py).

Each backend's test file passes a ``factory(path, collection, model, **options) -> VectorStore`` that
opens (or creates) a store under ``path``; the checks compare every mode with ``M3Index`` on the
same encodings, and exercise upsert / delete / re-open, model checks, ids and interrupted ingests.
"""

from __future__ import annotations

import numpy as np
import pytest

from m3embed.backends import ingest
from m3embed.backends.base import take_rows
from m3embed.index import MODES, M3Index, ModelMismatchError
from m3embed.output import M3Output

WORDS = ["cats", "dogs", "birds", "fish", "trees", "cars", "boats", "planes", "rivers", "mountains",
         "coffee", "music", "history", "football", "science", "bread", "rain", "winter", "ocean", "city"]
CORPUS = [{"id": f"d{i:02d}", "text": f"{WORDS[i % 20]} {WORDS[(3 * i + 1) % 20]} and {WORDS[(7 * i + 2) % 20]} "
           f"story {i}", "metadata": {"n": i}} for i in range(45)]
# one long document (well over a tiny multivector cap) among the short ones
CORPUS.append({"id": "long", "text": " ".join(f"{WORDS[j % 20]} tale {j}" for j in range(120)), "metadata": None})
QUERIES = ["boats and cars", "winter rain in the city", "coffee music", "history of science", "fish ocean",
           "tale of mountains and rivers"]
WEIRD_IDS = ['a "quoted" id', "back\\slash", "ünïcödé 文档", "new\nline", "x" * 300, "🙂", "O'Brien", "1", "-1"]


class Encoded:
    """Corpus and query encodings of one model, and the ``M3Index`` built from them (fp32 token vectors)."""

    def __init__(self, model, tmp_path_factory) -> None:
        self.model = model
        texts = [c["text"] for c in CORPUS]
        self.docs = model.encode(texts, return_dense=True, return_sparse=True, return_colbert=True, max_length=1024)
        self.queries = model.encode(QUERIES, return_dense=True, return_sparse=True, return_colbert=True)
        self.ids = [c["id"] for c in CORPUS]
        self.texts = texts
        self.meta = [c["metadata"] for c in CORPUS]
        self.index = M3Index.create(tmp_path_factory.mktemp("ref") / "idx", model, multivec="fp32")
        self.index.add(self.ids, self.docs, texts=texts, metadata=self.meta)
        self.index.save()


def fill(store, enc: Encoded, batch: int = 16) -> None:
    for s in range(0, len(enc.ids), batch):
        rows = list(range(s, min(s + batch, len(enc.ids))))
        store.add([enc.ids[r] for r in rows], take_rows(enc.docs, rows), texts=[enc.texts[r] for r in rows],
                  metadata=[enc.meta[r] for r in rows])


def assert_same_hits(got, ref, *, scores: bool = True, atol: float = 2e-5) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert [h.id for h in g] == [h.id for h in r]
        if scores:
            np.testing.assert_allclose([h.score for h in g], [h.score for h in r], rtol=1e-5, atol=atol)


def check_modes_match_index(store, enc: Encoded, fusions=("client", "auto")) -> None:
    """Every mode, both fusions: the same ids in the same order and the same scores as ``M3Index``."""
    for mode in MODES:
        ref = enc.index.search(enc.queries, k=7, mode=mode)
        for fusion in fusions:
            got = store.search(enc.queries, k=7, mode=mode, fusion=fusion)
            assert_same_hits(got, ref, scores=True)
    # text queries are encoded with the store's model; texts and metadata come back
    hits = store.search(QUERIES[:2], k=3, mode="all")
    ref = enc.index.search(QUERIES[:2], k=3, mode="all")
    assert_same_hits(hits, ref)
    for h in hits[0]:
        row = enc.ids.index(h.id)
        assert h.text == enc.texts[row] and h.metadata == enc.meta[row]
    comp = store.search(enc.queries, k=3, mode="all", fusion="client")[0][0].scores
    assert set(comp) == {"dense", "sparse", "colbert"}


def paper_fusion(enc: Encoded, k: int, dd: int, sd: int, w: tuple[float, float]) -> list[list[str]]:
    """dense+sparse as the paper's scripts fuse it: a document missing from one list counts 0 there."""
    dense = enc.index.search(enc.queries, k=dd, mode="dense")
    sparse = enc.index.search(enc.queries, k=sd, mode="sparse")
    out = []
    for dh, sh in zip(dense, sparse, strict=True):
        d, s = {h.id: h.score for h in dh}, {h.id: h.score for h in sh}
        fused = {x: (w[0] * d.get(x, 0.0) + w[1] * s.get(x, 0.0)) / (w[0] + w[1]) for x in {*d, *s}}
        out.append([x for x, _ in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))][:k])
    return out


def check_small_depths(store, enc: Encoded, *, exact_engine_modes=("multivec", "dense+sparse", "all")) -> None:
    """Depths and weights as ``M3Index``'s; engine modes not in ``exact_engine_modes`` must equal the paper's
    fusion (missing → 0) instead."""
    for kw in ({"dense_depth": 3, "sparse_depth": 2}, {"weights": (0.2, 0.8, 0.5)}, {"rerank_depth": 4}):
        for mode in ("all", "dense+sparse", "multivec", "rrf"):
            ref = enc.index.search(enc.queries, k=5, mode=mode, **kw)
            assert_same_hits(store.search(enc.queries, k=5, mode=mode, fusion="client", **kw), ref)
            if mode in getattr(store, "engine_modes", ()):
                got = store.search(enc.queries, k=5, mode=mode, fusion="engine", **kw)
                if mode in exact_engine_modes:
                    assert_same_hits(got, ref, scores=False)
                else:
                    w = kw.get("weights", (1.0, 0.3, 1.0))
                    expect = paper_fusion(enc, 5, kw.get("dense_depth", 1000), kw.get("sparse_depth", 1000), w[:2])
                    assert [[h.id for h in g] for g in got] == expect


def check_upsert_delete_reopen(factory, tmp_path, enc: Encoded) -> None:
    store = factory(tmp_path, "crud", enc.model)
    fill(store, enc)
    n = len(enc.ids)
    assert store.count() == n
    # upsert: the same ids again (new vectors of other documents) do not add rows
    store.add(enc.ids[:5], take_rows(enc.docs, [10, 11, 12, 13, 14]), texts=enc.texts[10:15])
    assert store.count() == n
    hit = store.search(take_rows(enc.docs, [10]), k=1, mode="dense")[0][0]
    assert hit.id in ("d00", "d10") and hit.score == pytest.approx(1.0, abs=1e-5)
    assert store.delete(["d01", "d02", "nope"]) == 2
    assert store.delete(["d01"]) == 0
    assert store.count() == n - 2
    assert store.existing(["d00", "d01", "d03", "nope"]) == {"d00", "d03"}
    for mode in ("dense", "sparse", "all"):
        assert all(h.id not in ("d01", "d02") for per in store.search(enc.queries, k=50, mode=mode) for h in per)
    store.close()
    again = factory(tmp_path, "crud", enc.model)
    assert again.count() == n - 2
    assert again.existing(["d01", "d03"]) == {"d03"}
    again.add(["d01"], take_rows(enc.docs, [1]))
    assert again.count() == n - 1
    again.close()


def check_mismatch_errors(factory, tmp_path, enc: Encoded, other_model) -> None:
    store = factory(tmp_path, "fp", enc.model)
    fill(store, enc)
    one = take_rows(enc.docs, [0])
    wide = np.ones((1, enc.docs.dense.shape[1] + 1), np.float32)
    bad = M3Output(dense=wide, lexical=one.lexical, colbert=one.colbert)
    with pytest.raises(ModelMismatchError, match="dense"):
        store.add(["x"], bad)
    with pytest.raises(ModelMismatchError):
        store.search(M3Output(dense=np.ones((1, 3), np.float32)), k=3, mode="dense")
    with pytest.raises(ValueError, match="2 ids but 1"):
        store.add(["x", "y"], take_rows(enc.docs, [0]))
    assert store.count() == len(enc.ids)
    store.close()
    # re-opening with another model (other weights, same dims): a clear error naming the collection
    with pytest.raises(ModelMismatchError, match="hash"):
        factory(tmp_path, "fp", other_model)
    # … or other dimensions
    with pytest.raises(ModelMismatchError, match="hidden_size"):
        factory(tmp_path, "fp", {**enc.index.fingerprint, "hidden_size": 7})
    ok = factory(tmp_path, "fp", other_model, check_model=False)
    assert ok.count() == len(enc.ids)
    ok.close()


def check_ids(factory, tmp_path, enc: Encoded) -> None:
    store = factory(tmp_path, "ids", enc.model)
    rows = list(range(len(WEIRD_IDS)))
    store.add(WEIRD_IDS, take_rows(enc.docs, rows))
    assert store.count() == len(WEIRD_IDS)
    assert store.existing([*WEIRD_IDS, "other"]) == set(WEIRD_IDS)
    for r, did in enumerate(WEIRD_IDS):
        top = store.search(take_rows(enc.docs, [r]), k=1, mode="dense")[0][0]
        assert top.id == did
    assert store.delete(WEIRD_IDS[:3]) == 3
    assert store.existing(WEIRD_IDS) == set(WEIRD_IDS[3:])
    for bad, err in ((["a", "a"], "duplicate"), ([""], "empty"), (["a\x00b"], "NUL"), (["\ud800"], "Unicode"),
                     (["x" * 5000], "bytes")):
        with pytest.raises(ValueError, match=err):
            store.add(bad, take_rows(enc.docs, list(range(len(bad)))))
    with pytest.raises(TypeError, match="index 0"):
        store.add([7], take_rows(enc.docs, [0]))
    assert store.count() == len(WEIRD_IDS) - 3
    store.close()


class FailAfter:
    """A store whose ``add`` raises after ``n`` successful calls (an interrupted ingest)."""

    def __init__(self, store, n: int) -> None:
        self.store, self.n = store, n

    def __getattr__(self, name):
        return getattr(self.store, name)

    def add(self, *a, **kw):
        if self.n == 0:
            raise KeyboardInterrupt("simulated interruption")
        self.n -= 1
        return self.store.add(*a, **kw)


def check_interrupted_ingest(factory, tmp_path, enc: Encoded) -> None:
    store = factory(tmp_path, "resume", enc.model)
    with pytest.raises(KeyboardInterrupt):
        ingest(FailAfter(store, 2), CORPUS, enc.model, chunk_size=10, max_length=1024)
    assert store.count() == 20
    # a plain re-run upserts everything: no duplicates, nothing missing
    assert ingest(store, CORPUS, enc.model, chunk_size=10, max_length=1024) == len(CORPUS)
    assert store.count() == len(CORPUS)
    # skip_existing re-encodes only what is missing, also after a second interruption
    assert store.delete([c["id"] for c in CORPUS[30:]]) == len(CORPUS) - 30
    with pytest.raises(KeyboardInterrupt):
        ingest(FailAfter(store, 1), CORPUS, enc.model, chunk_size=10, skip_existing=True, max_length=1024)
    assert store.count() == 40
    assert ingest(store, CORPUS, enc.model, chunk_size=10, skip_existing=True, max_length=1024) == len(CORPUS) - 40
    assert store.count() == len(CORPUS)
    assert_same_hits(store.search(enc.queries, k=7, mode="all"), enc.index.search(enc.queries, k=7, mode="all"),
                     atol=1e-4)
    store.close()


__all__ = ["CORPUS", "MODES", "QUERIES", "Encoded", "check_ids", "check_interrupted_ingest", "check_mismatch_errors",
           "check_modes_match_index", "check_small_depths", "check_upsert_delete_reopen", "fill"]
