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


@pytest.mark.parametrize("path", ["taat", "taat-small-groups", "product"])
def test_topk_equals_scipy(path):
    docs, qs = random_lex(500, 300, 20, 0), random_lex(12, 300, 8, 1)
    idx = SparseIndex(300, {})
    idx.add(docs)
    ref = lexical_scores(qs, docs)
    kw = {"taat": {"batch_threshold": 100}, "taat-small-groups": {"batch_threshold": 100, "chunk_postings": 50},
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
    for threshold in (100, 1):  # term-at-a-time and the batched product
        for i, (rows, _) in enumerate(idx.search(qs, 150, live, batch_threshold=threshold)):
            expect = np.flatnonzero((ref[i] > 0) & live)
            assert sorted(rows.tolist()) == expect.tolist()


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
