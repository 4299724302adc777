"""SparseIndex: term-at-a-time top-k equals scipy brute force; batching, deletions, quantisation."""

import numpy as np
import pytest
import scipy.sparse as sp

from m3embed.index.sparse import SparseIndex, quantize
from m3embed.output import LexicalWeights
from m3embed.scoring import lexical_scores


def random_lex(n, vocab, nnz, seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, nnz + 1, n)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1  # Zipf-like: a few ids are in many texts
    p /= p.sum()
    ids = [rng.choice(vocab, c, replace=False, p=p) for c in counts]
    weights = rng.uniform(0.001, 1.2, counts.sum()).astype(np.float32)
    return LexicalWeights(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                          np.concatenate(ids).astype(np.int64), weights, vocab)


@pytest.mark.parametrize("path", ["maxscore", "taat", "taat-small-groups", "product"])
def test_topk_equals_scipy(path):
    docs, qs = random_lex(500, 300, 20, 0), random_lex(12, 300, 8, 1)
    idx = SparseIndex(300, {})
    idx.add(docs)
    ref = lexical_scores(qs, docs)
    kw = {"maxscore": {"batch_threshold": 100, "algorithm": "maxscore"}, "taat": {"batch_threshold": 100},
          "taat-small-groups": {"batch_threshold": 100, "chunk_postings": 50, "algorithm": "taat"},
          "product": {"batch_threshold": 1}}[path]
    got = idx.search(qs, 10, None, **kw)
    for i, (rows, scores) in enumerate(got):
        pos = np.flatnonzero(ref[i] > 0)
        order = pos[np.lexsort((pos, -ref[i][pos]))][:10]
        assert rows.tolist() == order.tolist()
        np.testing.assert_allclose(scores, ref[i][order], rtol=1e-5)
        np.testing.assert_allclose(idx.scores(qs, i, rows), ref[i][order], rtol=1e-6)


def test_deleted_rows_and_incremental_add():
    a, b, qs = random_lex(100, 80, 10, 2), random_lex(50, 80, 10, 3), random_lex(5, 80, 6, 4)
    idx = SparseIndex(80, {})
    idx.add(a)
    idx.search(qs, 3, None)  # builds the inverted index, which the next add must invalidate
    idx.add(b)
    both = sp.vstack([a.to_csr(), b.to_csr()]).tocsr()
    live = np.ones(150, bool)
    live[::3] = False
    ref = lexical_scores(qs, both)
    for threshold, algo in ((100, "taat"), (100, "maxscore"), (1, "taat")):  # per query and the batched product
        for i, (rows, _) in enumerate(idx.search(qs, 150, live, batch_threshold=threshold, algorithm=algo)):
            expect = np.flatnonzero((ref[i] > 0) & live)
            assert sorted(rows.tolist()) == expect.tolist()


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_maxscore_equals_taat(dtype, monkeypatch):
    """MaxScore returns exactly term-at-a-time's documents, in order, for any k and with deleted rows;
    a query with one rare high-impact term and frequent low-impact ones does terminate early."""
    rng = np.random.default_rng(7)
    docs = random_lex(3000, 400, 25, 8)
    idx = SparseIndex(400, {"dtype": dtype})
    idx.add(docs)
    lens = np.diff(idx.inverted()[0])
    rare = np.flatnonzero(lens == lens[lens > 0].min())[0]  # the id held by the fewest documents
    common = np.argsort(-lens)[:3]  # the three longest posting lists
    designed = LexicalWeights(np.array([0, 4]), np.concatenate([[rare], common]).astype(np.int64),
                              np.array([1.0, 0.01, 0.01, 0.01], np.float32), 400)
    probes = []
    real = np.searchsorted
    monkeypatch.setattr(np, "searchsorted", lambda *a, **kw: probes.append(1) or real(*a, **kw))
    assert [r.tolist() for r, _ in idx.search(designed, 1, None, algorithm="maxscore")] == \
        [r.tolist() for r, _ in idx.search(designed, 1, None, algorithm="taat")]
    assert probes, "the designed query should switch to probing candidates"
    qs = random_lex(20, 400, 10, 9)
    live = rng.random(3000) > 0.2
    for k in (1, 5, 50, 3000):
        for lv in (None, live):
            a = idx.search(qs, k, lv, algorithm="maxscore")
            b = idx.search(qs, k, lv, algorithm="taat")
            for (ra, sa), (rb, sb) in zip(a, b, strict=True):
                assert ra.tolist() == rb.tolist()
                np.testing.assert_allclose(sa, sb, rtol=1e-6)
    with pytest.raises(ValueError, match="algorithm"):
        idx.search(qs, 3, None, algorithm="wand")


def test_quantisation():
    w = np.array([0.001, 0.01, 0.5, 1.234, 2.56, 700.0], np.float32)
    assert quantize(w, "uint8").tolist() == [1, 1, 50, 124, 255, 255]  # ceil(100·w), saturating
    assert quantize(w, "uint16").tolist() == [1, 1, 50, 124, 256, 65535]
    docs, qs = random_lex(300, 200, 15, 5), random_lex(6, 200, 6, 6)
    idx = SparseIndex(200, {"dtype": "uint16"})
    idx.add(docs)
    ref = lexical_scores(qs, docs)
    for i, (rows, scores) in enumerate(idx.search(qs, 10, None, batch_threshold=1)):
        np.testing.assert_allclose(scores, ref[i][rows], rtol=1e-5)  # reported scores are exact
        top = set(np.argsort(-ref[i])[:10][ref[i][np.argsort(-ref[i])[:10]] > 0].tolist())
        assert len(top & set(rows.tolist())) >= len(top) - 2
    with pytest.raises(ValueError, match="sparse impact dtype"):
        SparseIndex(10, {"dtype": "int4"})
