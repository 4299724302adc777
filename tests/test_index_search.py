"""M3Index search: every mode equals brute-force scoring with m3embed.scoring on a tiny model."""

import numpy as np
import pytest
from helpers import tiny_checkpoint

from m3embed import M3Model
from m3embed.index import MODES, M3Index, SearchHit
from m3embed.index.core import model_fingerprint
from m3embed.scoring import (
    PAPER_WEIGHTS,
    colbert_score,
    dense_scores,
    lexical_scores,
    reciprocal_rank_fusion,
)

WORDS = ["cats", "dogs", "birds", "fish", "trees", "cars", "boats", "planes", "rivers", "mountains",
         "coffee", "music", "history", "football", "science", "bread", "rain", "winter", "ocean", "city"]
CORPUS = [{"id": f"d{i:02d}", "text": f"{WORDS[i % 20]} {WORDS[(3 * i + 1) % 20]} and {WORDS[(7 * i + 2) % 20]} "
           f"story {i}", "metadata": {"n": i}} for i in range(45)]
QUERIES = ["boats and cars", "winter rain in the city", "coffee music", "history of science", "fish ocean"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("idx"), max_positions=1026, colbert_dim=16, seed=3)
    return M3Model.from_pretrained(path)


@pytest.fixture(scope="module")
def index(model, tmp_path_factory):
    return M3Index.build(CORPUS, model, tmp_path_factory.mktemp("i") / "idx", show_progress=False, multivec="fp32",
                         chunk_size=16)


@pytest.fixture(scope="module")
def enc(model):
    docs = model.encode([c["text"] for c in CORPUS], return_dense=True, return_sparse=True, return_colbert=True)
    qs = model.encode(QUERIES, return_dense=True, return_sparse=True, return_colbert=True)
    return docs, qs


def _brute(enc, mode, k):
    """Reference rankings from the core's scoring functions over the whole corpus (N < every depth)."""
    docs, qs = enc
    d = dense_scores(qs.dense, docs.dense)
    s = lexical_scores(qs.lexical, docs.lexical)
    c = np.array([[colbert_score(qs.colbert[i], docs.colbert[j]) for j in range(len(docs))] for i in range(len(qs))])
    wd, ws, wc = PAPER_WEIGHTS
    out = []
    for i in range(len(qs)):
        if mode == "dense":
            sc = d[i]
        elif mode == "sparse":
            sc = np.where(s[i] > 0, s[i], -np.inf)
        elif mode == "multivec":
            sc = c[i]
        elif mode == "dense+sparse":
            sc = (wd * d[i] + ws * s[i]) / (wd + ws)
        elif mode == "all":
            sc = (wd * d[i] + ws * s[i] + wc * c[i]) / (wd + ws + wc)
        else:
            rank = [list(np.argsort(-d[i], kind="stable")),
                    [j for j in np.argsort(-s[i], kind="stable") if s[i][j] > 0],
                    list(np.argsort(-c[i], kind="stable"))]
            fused = reciprocal_rank_fusion(rank, k=60)[:k]
            out.append([(CORPUS[j]["id"], f) for j, f in fused])
            continue
        order = [j for j in np.argsort(-sc, kind="stable") if np.isfinite(sc[j])][:k]
        out.append([(CORPUS[j]["id"], float(sc[j])) for j in order])
    return out


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_equals_brute_force(index, enc, mode):
    k = 7
    ref = _brute(enc, mode, k)
    # texts (encoded by the model the index remembers) and pre-encoded queries give the same hits
    for got in (index.search(QUERIES, k=k, mode=mode), index.search(enc[1], k=k, mode=mode)):
        assert len(got) == len(QUERIES)
        for g, r in zip(got, ref, strict=True):
            assert [h.id for h in g] == [x[0] for x in r]
            np.testing.assert_allclose([h.score for h in g], [x[1] for x in r], rtol=1e-5, atol=1e-6)


def test_ranking_is_tie_free(enc):
    # the brute-force equality above is only meaningful without ties
    for mode in ("dense", "sparse", "multivec", "all"):
        for r in _brute(enc, mode, 7):
            scores = [x[1] for x in r]
            assert len(set(scores)) == len(scores)


def test_hit_fields_and_components(index):
    hits = index.search(["boats and cars"], k=3, mode="all")[0]
    assert all(isinstance(h, SearchHit) for h in hits)
    h = hits[0]
    row = int(h.id[1:])
    assert h.text == CORPUS[row]["text"] and h.metadata == {"n": row}
    wd, ws, wc = PAPER_WEIGHTS
    c = h.scores
    assert h.score == pytest.approx((wd * c["dense"] + ws * c["sparse"] + wc * c["colbert"]) / (wd + ws + wc))


def test_default_weights_are_the_index_models_hybrid_weights(model, enc, tmp_path):
    assert model_fingerprint(model)["hybrid_weights"] == list(PAPER_WEIGHTS)
    model.hybrid_weights = (0.0, 0.0, 1.0)  # a model whose own fusion is ColBERT alone
    try:
        idx = M3Index.build(CORPUS, model, tmp_path / "w", show_progress=False, multivec="fp32")
    finally:
        model.hybrid_weights = PAPER_WEIGHTS
    idx.close()
    idx = M3Index.open(tmp_path / "w")  # the weights live in the manifest, not only in memory
    assert idx.fingerprint["hybrid_weights"] == [0.0, 0.0, 1.0]
    got = idx.search(enc[1], k=5, mode="all")
    for hits in got:
        assert all(h.score == pytest.approx(h.scores["colbert"]) for h in hits)
    explicit = idx.search(enc[1], k=5, mode="all", weights=PAPER_WEIGHTS)
    assert [[h.id for h in g] for g in got] != [[h.id for h in g] for g in explicit]  # weights=... still wins
    with pytest.raises(ValueError, match="non-negative"):
        idx.search(enc[1], k=5, mode="all", weights=(1, -1, 1))
    idx.close()


def test_custom_weights_and_depths(index, enc):
    got = index.search(enc[1], k=5, mode="dense+sparse", weights=(0.2, 0.8, 0))
    docs, qs = enc
    d = dense_scores(qs.dense, docs.dense)
    s = lexical_scores(qs.lexical, docs.lexical)
    for i, g in enumerate(got):
        sc = (0.2 * d[i] + 0.8 * s[i]) / 1.0
        assert [h.id for h in g] == [CORPUS[j]["id"] for j in np.argsort(-sc, kind="stable")[:5]]
    # a dense depth of 3 and no sparse list: candidates are exactly the dense top-3
    got = index.search(enc[1], k=10, mode="all", dense_depth=3, sparse_depth=0)
    top3 = index.search(enc[1], k=3, mode="dense")
    for g, t in zip(got, top3, strict=True):
        assert sorted(h.id for h in g) == sorted(h.id for h in t)


def test_multivec_reranks_only_dense_top(index, enc):
    got = index.search(enc[1], k=10, mode="multivec", rerank_depth=4)
    dense = index.search(enc[1], k=10, mode="dense")
    for g, d in zip(got, dense, strict=True):
        assert len(g) == 10  # k > rerank_depth: the dense top-k is re-ranked
        assert {h.id for h in g} == {h.id for h in d}


@pytest.mark.parametrize("codec", ["fp16", "int8", "residual"])
def test_compressed_multivec_is_close(model, enc, codec, tmp_path):
    qs = enc[1]
    idx = M3Index.build(CORPUS, model, tmp_path / codec, show_progress=False, multivec=codec, centroids=16)
    exact = M3Index.build(CORPUS, model, None, show_progress=False, multivec="fp32")
    a = idx.search(qs, k=10, mode="multivec")
    b = exact.search(qs, k=10, mode="multivec")
    tol = {"fp16": 2e-3, "int8": 2e-2, "residual": 0.15}[codec]
    for x, y in zip(a, b, strict=True):
        ref = {h.id: h.score for h in y}
        common = [h for h in x if h.id in ref]
        assert len(common) >= {"fp16": 10, "int8": 8, "residual": 5}[codec]
        assert max(abs(h.score - ref[h.id]) for h in common) < tol
    exact.close(discard=True)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_dense_kinds(model, enc, kind, tmp_path):
    opts = {"hnsw": {"dense": "hnsw", "hnsw_m": 8}, "ivf": {"dense": "ivf", "ivf_nlist": 2, "ivf_nprobe": 2}}[kind]
    idx = M3Index.build(CORPUS, model, tmp_path / kind, show_progress=False, multivec="none", **opts)
    got = idx.search(enc[1], k=5, mode="dense")
    ref = _brute(enc, "dense", 5)
    overlap = np.mean([len({h.id for h in g} & {x[0] for x in r}) / 5 for g, r in zip(got, ref, strict=True)])
    assert overlap >= 0.8  # nprobe = nlist: IVF is exact; HNSW on 45 points nearly so
    idx.close()
    reopened = M3Index.open(tmp_path / kind)
    assert [[h.id for h in g] for g in reopened.search(enc[1], k=5, mode="dense")] == [[h.id for h in g] for g in got]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_quantised_sparse_reports_exact_scores(model, enc, dtype):
    idx = M3Index.build(CORPUS, model, None, show_progress=False, multivec="none", sparse_dtype=dtype)
    ref = _brute(enc, "sparse", 5)
    got = idx.search(enc[1], k=5, mode="sparse")
    for g, r in zip(got, ref, strict=True):
        exact = dict(r)
        hits = [h for h in g if h.id in exact]
        assert len(hits) >= min(4, len(r))  # ceil(100·w) changes near-ties only
        for h in hits:
            assert h.score == pytest.approx(exact[h.id], rel=1e-5)
        assert [h.score for h in g] == sorted((h.score for h in g), reverse=True)
    idx.close(discard=True)


def test_no_multivec_store(model, enc):
    idx = M3Index.build(CORPUS[:10], model, None, show_progress=False, multivec="none")
    with pytest.raises(ValueError, match="multivec='none'"):
        idx.search(enc[1], k=3, mode="all")
    assert len(idx.search(enc[1], k=3, mode="rrf")[0]) == 3  # fuses dense and sparse only
    idx.close(discard=True)


def test_residual_two_stage_rerank(model, enc):
    from m3embed.scoring import maxsim_packed

    idx = M3Index.build(CORPUS, model, None, show_progress=False, multivec="residual", centroids=16)
    qs = enc[1]
    mv = idx.multivec
    rows = np.arange(len(CORPUS))
    # first stage = MaxSim against each token vector's centroid
    (codes,), offsets = mv._gather(rows, lambda seg, take: (np.asarray(seg.arrays["codes"][take], np.intp),))
    np.testing.assert_allclose(mv.approx_scores(qs.colbert[0], rows),
                               maxsim_packed(qs.colbert[0], mv.residual.centroids[codes], offsets), rtol=1e-5)
    full = idx.search(qs, k=5, mode="all", colbert_depth=len(CORPUS))  # no pruning: every candidate decoded
    for got, ref in zip(full, _decoded_all(idx, qs, 5), strict=True):
        assert [h.id for h in got] == ref
    pruned = idx.search(qs, k=5, mode="all", colbert_depth=15)  # only 15 of 45 candidates decoded
    for p, f in zip(pruned, full, strict=True):
        assert len(p) == 5 and len({h.id for h in p} & {h.id for h in f}) >= 3
    idx.close(discard=True)


def _decoded_all(idx, qs, k):
    """Brute-force 'all' over every document with the store's decoded vectors."""
    from m3embed.scoring import maxsim_packed

    rows = np.arange(idx.n_rows)
    cv = idx.multivec.get(rows)
    d = dense_scores(qs.dense, np.asarray(idx.dense.vectors))
    s = lexical_scores(qs.lexical, idx.sparse.forward)
    wd, ws, wc = PAPER_WEIGHTS
    out = []
    for i in range(len(qs)):
        c = maxsim_packed(qs.colbert[i], cv.data, cv.offsets)
        sc = (wd * d[i] + ws * s[i] + wc * c) / (wd + ws + wc)
        out.append([idx.docs.ids[j] for j in np.argsort(-sc, kind="stable")[:k]])
    return out


@pytest.mark.parametrize("mode", ["multivec", "all", "rrf"])
@pytest.mark.parametrize("budget", ["COLBERT_DECODE_BUDGET", "COLBERT_SIM_BUDGET"])
def test_query_groups_do_not_change_results(index, enc, mode, budget, monkeypatch):
    """ColBERT re-ranking decodes candidates once per group of queries: any grouping (one group; one
    query per decoded group; one query per similarity matmul) gives each query the results of
    searching it alone."""
    import m3embed.index.search as search_mod

    _, qs = enc
    together = index.search(qs, k=7, mode=mode)
    monkeypatch.setattr(search_mod, budget, 1)
    apart = index.search(qs, k=7, mode=mode)
    for a, b in zip(together, apart, strict=True):
        assert [h.id for h in a] == [h.id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=0, atol=1e-6)


def test_colbert_many_small_and_large_requests(index, enc):
    """Requests covering a small part of the decoded union (gathered rows) and most of it (scored
    against the whole union), unsorted and repeated rows: each equals MaxSim against its own rows."""
    from m3embed.index.search import colbert_many
    from m3embed.scoring import maxsim_packed

    _, qs = enc
    reqs = [(0, np.array([3, 1, 2])), (1, np.array([40, 41, 40])), (2, np.arange(45)[::-1]), (3, np.array([7])),
            (4, np.array([], np.int64))]
    got = colbert_many(index, qs, reqs)
    for (i, rows), scores in zip(reqs, got, strict=True):
        cv = index.multivec.get(rows)
        np.testing.assert_allclose(scores, maxsim_packed(qs.colbert[i], cv.data, cv.offsets), rtol=0, atol=1e-6)


def test_colbert_many_decodes_a_shared_union_once(index, enc, monkeypatch):
    """Queries asking for rows already in the group's union join it even when one request alone is
    over the decode budget (long documents): one decoding for all of them, same scores."""
    import m3embed.index.search as search_mod
    from m3embed.scoring import maxsim_packed

    _, qs = enc
    rows = np.arange(len(index.multivec))
    reqs = [(i, rows) for i in range(len(qs))]
    calls = []
    prepare = type(index.multivec).prepare

    def counting(self, r, **kw):
        calls.append(len(r))
        return prepare(self, r, **kw)

    monkeypatch.setattr(type(index.multivec), "prepare", counting)
    monkeypatch.setattr(search_mod, "COLBERT_DECODE_BUDGET", 1)
    got = search_mod.colbert_many(index, qs, reqs)
    assert calls == [len(rows)]
    cv = index.multivec.get(rows)
    for (i, _), scores in zip(reqs, got, strict=True):
        np.testing.assert_allclose(scores, maxsim_packed(qs.colbert[i], cv.data, cv.offsets), rtol=0, atol=1e-6)


def test_build_with_mcls_stores_mcls_vectors(model, tmp_path):
    """``M3Index.build(mcls=True)`` indexes what ``encode(mcls=True)`` gives (a [CLS] every 256 tokens)."""
    long_docs = [{"id": f"L{i}", "text": " ".join(WORDS[(i + j) % 20] for j in range(300 + 40 * i))} for i in range(3)]
    texts = [d["text"] for d in long_docs]
    idx = M3Index.build(long_docs, model, tmp_path / "m", show_progress=False, mcls=True, multivec="fp32",
                        max_length=1024)
    want = model.encode(texts, max_length=1024, return_dense=True, mcls=True).dense
    plain = model.encode(texts, max_length=1024, return_dense=True).dense
    got = np.asarray(idx.dense.vectors)
    assert np.abs(got - plain).max() > 1e-3  # MCLS changes the dense vectors of long texts …
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # … and the index holds the MCLS ones


@pytest.mark.parametrize("codec_sample", [12, 0])
def test_build_fits_the_residual_codebook_on_a_corpus_wide_sample(model, tmp_path, monkeypatch, codec_sample):
    """``build`` fits the codebook on ``codec_sample`` documents drawn from the whole corpus (not just
    the first chunk, which misrepresents a corpus sorted by source); ``codec_sample=0``: the first chunk."""
    from m3embed.index.multivec import ResidualCodec

    seen = []
    real_fit = ResidualCodec.fit.__func__
    monkeypatch.setattr(ResidualCodec, "fit", classmethod(lambda cls, x, **kw: seen.append(x.copy())
                                                          or real_fit(cls, x, **kw)))
    idx = M3Index.build(CORPUS, model, tmp_path / "i", show_progress=False, multivec="residual", centroids=8,
                        chunk_size=16, codec_sample=codec_sample)
    if codec_sample:
        picks = sorted(np.random.default_rng(0).choice(len(CORPUS), codec_sample, replace=False).tolist())
        assert max(picks) >= 16  # the sample reaches past the first chunk
    else:
        picks = list(range(16))
    want = model.encode([CORPUS[i]["text"] for i in picks], return_dense=False, return_sparse=False,
                        return_colbert=True).colbert.data
    assert len(seen) == 1  # fitted once, shared by every chunk's segment
    np.testing.assert_allclose(seen[0], want, rtol=0, atol=1e-5)
    assert len(idx.multivec.segments) == 3 and idx.n_rows == len(CORPUS)
    with pytest.raises(ValueError, match="before the first add"):
        idx.fit_codec(model.encode(["x"], return_colbert=True))
    idx.close()


def test_fit_codec_errors(model, tmp_path):
    enc = model.encode(["boats", "cars"], return_dense=True, return_sparse=True, return_colbert=True)
    with pytest.raises(ValueError, match="only the residual codec"):
        M3Index.create(tmp_path / "a", model, multivec="fp16").fit_codec(enc)
    with pytest.raises(ValueError, match="no ColBERT vectors"):
        M3Index.create(tmp_path / "b", model, multivec="residual").fit_codec(
            model.encode(["boats"], return_dense=True, return_colbert=False))
    with pytest.raises(ValueError, match="codec_sample must be a non-negative integer"):
        M3Index.build(CORPUS, model, tmp_path / "d", show_progress=False, multivec="residual", codec_sample=-1)
    idx = M3Index.create(tmp_path / "c", model, multivec="residual", centroids=2)
    idx.fit_codec(enc)  # before any add: fine, and the first add keeps this codebook
    centroids = idx.multivec.residual.centroids.copy()
    idx.add(["a", "b"], enc)
    np.testing.assert_array_equal(idx.multivec.residual.centroids, centroids)
