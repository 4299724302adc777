"""BM25 over XLM-R token ids against a hand computation of Lucene's BM25."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from helpers import shared_dir, tokenizer_dir

from m3embed.eval.bm25 import BM25, BM25S_DEFAULTS
from m3embed.tokenize import M3Tokenizer

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log with another dog",
    "a cat and a dog are friends",
    "quantum chromodynamics",
    "",
]
IDS = [f"d{i}" for i in range(len(CORPUS))]


@pytest.fixture(scope="module")
def tok():
    return M3Tokenizer.from_dir(tokenizer_dir())


def _hand_bm25(tok, corpus, query, k1, b):
    docs = [tok.backend.encode(t, add_special_tokens=False).ids for t in corpus]
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    df = Counter(t for d in docs for t in set(d))
    scores = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for t in tok.backend.encode(query, add_special_tokens=False).ids:  # a repeated query token counts twice
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(s)
    return np.array(scores)


@pytest.mark.parametrize(("k1", "b"), [(0.9, 0.4), BM25S_DEFAULTS, (1.2, 0.0)])
@pytest.mark.parametrize("query", ["cat on the mat", "dog dog", "the cat", "quantum cats"])
def test_scores_equal_hand_computation(tok, k1, b, query):
    bm = BM25(tok, k1=k1, b=b).index(IDS, CORPUS)
    np.testing.assert_allclose(bm.scores(query), _hand_bm25(tok, CORPUS, query, k1, b), rtol=1e-5, atol=1e-6)


def test_known_value_for_a_single_token(tok):
    # "▁quantum" occurs once, in d3 only; N = 5 → idf = ln(1 + 4.5/1.5) = ln 4
    bm = BM25(tok, k1=0.9, b=0.4).index(IDS, CORPUS)
    lens = [len(tok.backend.encode(t, add_special_tokens=False).ids) for t in CORPUS]
    assert tok.backend.encode("quantum", add_special_tokens=False).ids == \
        tok.backend.encode("quantum chromodynamics", add_special_tokens=False).ids[:1]
    expect = math.log(4) * 1 / (1 + 0.9 * (0.6 + 0.4 * lens[3] / (sum(lens) / 5)))
    s = bm.scores("quantum")
    assert s[3] == pytest.approx(expect, rel=1e-5) and np.count_nonzero(s) == 1


def test_search_order_ties_and_k(tok):
    corpus = ["apple banana", "apple banana", "cherry", "apple"]
    bm = BM25(tok).index(["x", "y", "z", "w"], corpus)
    s = bm.scores("apple banana")
    hits = bm.search(["apple banana", "cherry", "zzzyyyqqq unseen"], k=2)
    assert [h.id for h in hits[0]] == ["x", "y"]  # tied best: corpus order; "w" (lower score) cut by k
    assert hits[0][0].score == pytest.approx(float(s[0])) and s[0] == s[1] > s[3] > 0
    assert [h.id for h in hits[1]] == ["z"]  # only matching documents are returned
    assert hits[2] == []  # no query token in the corpus vocabulary
    everything = bm.search(["apple banana"], k=100)[0]
    assert [h.id for h in everything] == ["x", "y", "w"]
    assert all(a.score >= b.score for a, b in itertools.pairwise(everything))


def test_bad_input(tok):
    with pytest.raises(ValueError, match="k1 >= 0"):
        BM25(tok, k1=-1)
    with pytest.raises(ValueError, match="2 document ids but 1 texts"):
        BM25(tok).index(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="not unique"):
        BM25(tok).index(["a", "a"], ["x", "y"])
    bm = BM25(tok).index(["a"], ["x"])
    with pytest.raises(ValueError, match="k must be >= 1"):
        bm.search(["x"], k=0)
    with pytest.raises(TypeError, match="list of str"):
        bm.search("x")
    with pytest.raises(RuntimeError, match="index must be called"):
        BM25(tok).scores("x")


def test_reproduces_baselines_md_on_xquad_en(tok):
    # shared/data/BASELINES.md: BM25 (bm25s defaults, XLM-R tokens) nDCG@10 0.9558, R@100 0.9933
    from m3embed.eval import evaluate_run, hits_to_run, load_beir

    root = shared_dir() / "data" / "xquad_r" / "paragraph" / "en"
    if not root.is_dir():
        pytest.skip(f"{root} not found (set M3EMBED_SHARED)")
    ds = load_beir(root, "test")
    bm = BM25(tok).index([d.id for d in ds.corpus], [d.full_text for d in ds.corpus])
    m = evaluate_run(ds.qrels, hits_to_run(ds.query_ids, bm.search(list(ds.queries.values()), k=100))).mean
    assert round(m["nDCG@10"], 4) == 0.9558 and round(m["R@100"], 4) == 0.9933
