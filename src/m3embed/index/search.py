"""The paper's retrieval modes over an index (M3-REFERENCE §5), scored with :mod:`m3embed.scoring`.

* ``dense`` — faiss top-k by ``e_q·e_p``;
* ``sparse`` — inverted-index top-k by ``Σ w_q·w_p`` (documents with a positive score only);
* ``multivec`` — dense top-``rerank_depth`` (200) re-ranked by ColBERT MaxSim;
* ``dense+sparse`` — union of dense top-``dense_depth`` and sparse top-``sparse_depth`` (1000 each),
  re-ranked by ``(w_d·s_d + w_s·s_s) / (w_d + w_s)``;
* ``all`` — union of dense top-``dense_depth`` and sparse top-``sparse_depth`` (200 each),
  re-ranked by ``(w_d·s_d + w_s·s_s + w_c·s_c) / (w_d + w_s + w_c)``;
* ``rrf`` — reciprocal-rank fusion (k = 60) of the dense and sparse rankings (``dense_depth`` /
  ``sparse_depth``, 1000 each) and, when the index has token vectors, the ``multivec`` ranking.

With the ``residual`` token-vector codec, ColBERT re-ranking is two-stage as in PLAID: every
candidate is first scored with its token vectors' centroids only (2 bytes per vector read), and
only the best ``colbert_depth`` (default 64, at least k) by that fused score are decompressed and
scored exactly; the other codecs score every candidate exactly.

Weights are ``(w_dense, w_sparse, w_colbert)``, default the ``hybrid_weights`` of the model that built
the index (``M3Model.hybrid_weights``: the paper's ``(1, 0.3, 1)`` unless the checkpoint's
``m3embed.json`` gives its own); fused scores are
``weighted_sum``'s normalised sums (the ranking is the paper's). A candidate missing from one
list gets that mode's *exact* score, computed from the stored vectors — not 0 as in the paper's
Pyserini scripts; exact scores are cheap here and make the fusion independent of list depths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..output import M3Output
from ..scoring import PAPER_WEIGHTS, check_hybrid_weights, maxsim_reduce, reciprocal_rank_fusion, weighted_sum

if TYPE_CHECKING:
    from .core import M3Index

MODES = ("dense", "sparse", "multivec", "dense+sparse", "all", "rrf")
RRF_K = 60
RESIDUAL_COLBERT_DEPTH = 64  # residual store: candidates decompressed after the centroid-only first stage
COLBERT_DECODE_BUDGET = 1 << 27  # floats decoded at once when re-ranking a group of queries (512 MiB)
COLBERT_SIM_BUDGET = 1 << 25  # query-token × passage-token similarities held at once (128 MiB)
DEPTHS = {  # mode → (dense_depth, sparse_depth, rerank_depth); None → k
    "dense": (None, 0, 0),
    "sparse": (0, None, 0),
    "multivec": (0, 0, 200),
    "dense+sparse": (1000, 1000, 0),
    "all": (200, 200, 0),
    "rrf": (1000, 1000, 200),
}

Hit = tuple[int, float, dict[str, float]]  # (row, score, component scores)


def needs(mode: str, has_multivec: bool) -> set[str]:
    """Query representations a mode uses: a subset of {"dense", "sparse", "colbert"}."""
    return {"dense": {"dense"}, "sparse": {"sparse"}, "multivec": {"dense", "colbert"},
            "dense+sparse": {"dense", "sparse"}, "all": {"dense", "sparse", "colbert"},
            "rrf": {"dense", "sparse", "colbert"} if has_multivec else {"dense", "sparse"}}[mode]


def run(index: M3Index, q: M3Output, k: int, mode: str, *, weights=None, dense_depth: int | None = None,
        sparse_depth: int | None = None, rerank_depth: int | None = None,
        colbert_depth: int | None = None) -> list[list[Hit]]:
    """Rows, scores and component scores of the top-``k`` documents for each query, best first."""
    w = fusion_weights(weights, index.fingerprint)
    dd, sd, rd = DEPTHS[mode]
    dd = _depth("dense_depth", dense_depth, dd, k)
    sd = _depth("sparse_depth", sparse_depth, sd, k)
    rd = _depth("rerank_depth", rerank_depth, rd, k)
    cd = _colbert_depth(index, colbert_depth, k)
    dd_rank = dd  # the dense list's own depth (rrf); the search may go deeper for the multivec list
    if mode == "multivec":
        dd = max(rd, k)
    if mode == "rrf" and index.multivec is not None:
        dd = max(dd, rd)
    live = index.live_mask()
    nq = len(q)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    dense_hits = _dense(index, q, dd, live) if dd else [empty] * nq
    sparse_hits = _sparse(index, q, sd, live) if sd else [empty] * nq
    # 1. candidates and their dense / sparse scores, per query; ColBERT requests are collected so that
    #    the token vectors of many queries' candidates are decoded and scored together (step 2)
    plans: list[tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]] | list[Hit]] = []
    for i in range(nq):
        dh, sh = dense_hits[i], sparse_hits[i]
        if mode == "dense":
            plans.append([(r, s, {"dense": s}) for r, s in zip(*dh, strict=True)])
        elif mode == "sparse":
            plans.append([(r, s, {"sparse": s}) for r, s in zip(*sh, strict=True)])
        elif mode in ("multivec", "rrf"):
            if mode == "rrf" and index.multivec is None:
                plans.append((np.zeros(0, np.int64), {}, {}))
                continue
            rows = dh[0][: max(rd, k)] if mode == "multivec" else dh[0][:rd]
            plans.append(_prune(index, q, i, rows, {}, {"colbert": 1.0}, cd))
        else:  # dense+sparse, all
            rows = np.union1d(dh[0], sh[0])
            comp = {"dense": index.dense.scores(q.dense[i], rows), "sparse": index.sparse.scores(q.lexical, i, rows)}
            wts = {"dense": w[0], "sparse": w[1]}
            if mode == "all":
                wts["colbert"] = w[2]
                plans.append(_prune(index, q, i, rows, comp, wts, cd))
            else:
                plans.append(_rank(rows, weighted_sum(comp, wts), comp, k))
    # 2. exact ColBERT scores of every pruned candidate list
    todo = [i for i, p in enumerate(plans) if isinstance(p, tuple) and "colbert" in p[2]]
    if todo:
        scores = colbert_many(index, q, [(i, plans[i][0]) for i in todo])
        for i, sc in zip(todo, scores, strict=True):
            rows, comp, wts = plans[i]
            plans[i] = (rows, {**comp, "colbert": sc}, wts)
    # 3. fused ranking
    out: list[list[Hit]] = []
    for i, plan in enumerate(plans):
        if isinstance(plan, list):
            hits = plan
        elif mode == "rrf":
            dh, sh = dense_hits[i], sparse_hits[i]
            rankings = [dh[0][:dd_rank].tolist(), sh[0].tolist()]
            if index.multivec is not None:
                rows, comp, _ = plan
                rankings.append([r for r, _, _ in _rank(rows, comp["colbert"], comp, len(rows))])
            fused = reciprocal_rank_fusion(rankings, k=RRF_K)[:k]
            hits = [(int(r), float(s), {"rrf": float(s)}) for r, s in fused]
        else:
            rows, comp, wts = plan
            hits = _rank(rows, weighted_sum(comp, wts), comp, k)
        out.append([(int(r), float(s), {m: float(v) for m, v in c.items()}) for r, s, c in hits[:k]])
    return out


def fusion_weights(weights: object | None, fingerprint: dict) -> tuple[float, float, float]:
    """``weights`` checked, or by default the ``hybrid_weights`` of the model that built the store
    (the paper's for a store written before models carried them)."""
    if weights is None:
        return check_hybrid_weights(fingerprint.get("hybrid_weights") or PAPER_WEIGHTS,
                                    where="the index model's hybrid_weights")
    return check_hybrid_weights(weights)


def _depth(name: str, given: int | None, default: int | None, k: int) -> int:
    if given is None:
        return k if default is None else (max(default, k) if default else 0)
    if not isinstance(given, int | np.integer) or isinstance(given, bool) or given < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {given!r}")
    return int(given)


def _dense(index: M3Index, q: M3Output, depth: int, live: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    scores, rows = index.dense.search(q.dense, depth, live)
    out = []
    for s, r in zip(scores, rows, strict=True):
        keep = r >= 0
        r, s = r[keep].astype(np.int64), s[keep]
        order = np.lexsort((r, -s))  # ties broken by row, as the sparse side
        out.append((r[order], s[order]))
    return out


def _sparse(index: M3Index, q: M3Output, depth: int, live: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    return index.sparse.search(q.lexical, depth, live)


def _colbert_depth(index: M3Index, given: int | None, k: int) -> int | None:
    """How many candidates get decompressed ColBERT scores (``None``: all of them)."""
    mv = index.multivec
    if mv is None or mv.codec != "residual":
        if given is not None:
            _depth("colbert_depth", given, None, k)
        return None  # no cheap first stage: every candidate is scored exactly
    if given is None:
        return max(RESIDUAL_COLBERT_DEPTH, k)
    return max(_depth("colbert_depth", given, None, k), k)


def _prune(index: M3Index, q: M3Output, i: int, rows: np.ndarray, comp: dict[str, np.ndarray],
           wts: dict[str, float], depth: int | None) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """The candidates of query ``i`` that get exact ColBERT scores: with a residual store and more than
    ``depth`` candidates, the ``depth`` best by the fused score using centroid-only MaxSim (PLAID)."""
    if index.multivec is None:
        raise ValueError("this index has no token vectors (built with multivec='none'); "
                         "use mode 'dense', 'sparse', 'dense+sparse' or 'rrf'")
    rows = np.asarray(rows, dtype=np.int64)
    if depth is not None and len(rows) > depth:
        approx = index.multivec.approx_scores(q.colbert[i], rows)
        stage1 = weighted_sum({**comp, "colbert": approx}, wts)
        keep = np.lexsort((rows, -np.asarray(stage1)))[:depth]
        rows = rows[keep]
        comp = {m: v[keep] for m, v in comp.items()}
    return rows, comp, wts


def colbert_many(index: M3Index, q: M3Output, requests: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
    """Exact ColBERT MaxSim of query ``i``'s token vectors against each of ``rows`` for every
    ``(i, rows)`` request → one float32 array per request.

    Requests are grouped by the union of their rows (at most ``COLBERT_DECODE_BUDGET`` decoded
    floats). Queries whose rows hold at least half of the union's vectors (batched queries over a
    small corpus) share one decoding of the union and are scored against all of it, several per
    ``[Σ n_q, T]`` matmul (at most ``COLBERT_SIM_BUDGET`` similarities); any other query decodes just
    its own rows, so no query pays for passages it did not ask about. Residual stores are scored
    without re-normalising (``MultiVecStore.prepare``).
    """
    mv = index.multivec
    requests = [(i, np.asarray(rows, dtype=np.int64)) for i, rows in requests]
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(requests)
    dim = mv.dim
    lengths = mv.lengths()
    seen = np.zeros(len(mv), dtype=bool)
    group: list[int] = []
    vecs = 0

    def flush() -> None:
        nonlocal vecs
        if not group:
            return
        union = np.flatnonzero(seen)  # sorted: the memory map is read in row order
        total = int(lengths[union].sum())
        whole, own = [], []
        for j in group:
            (whole if 2 * int(lengths[requests[j][1]].sum()) >= total else own).append(j)
        if whole:
            pv = mv.prepare(union, scratch=True)  # consumed right below
        batch: list[int] = []
        qtok = 0
        for j in [*whole, -1]:  # -1: flush the last batch
            nq = len(q.colbert[requests[j][0]]) if j >= 0 else 0
            if batch and (j < 0 or (qtok + nq) * total > COLBERT_SIM_BUDGET):
                qs = [np.asarray(q.colbert[requests[b][0]], dtype=np.float32) for b in batch]
                sim = mv.similarities(np.concatenate(qs), pv)  # [Σ n_q, T]
                start = 0
                for b, x in zip(batch, qs, strict=True):
                    full = maxsim_reduce(sim[start : start + len(x)], pv.offsets)
                    out[b] = full[np.searchsorted(union, requests[b][1])]
                    start += len(x)
                batch, qtok = [], 0
            if j >= 0:
                batch.append(j)
                qtok += nq
        for j in own:  # decoding just its rows costs less than gathering them from a decoded union
            i, rows = requests[j]
            u = np.unique(rows)
            pv = mv.prepare(u, scratch=True)
            sc = maxsim_reduce(mv.similarities(q.colbert[i], pv), pv.offsets)
            out[j] = sc[np.searchsorted(u, rows)]
        seen[union] = False
        group.clear()
        vecs = 0

    for j, (_, rows) in enumerate(requests):
        if len(rows) == 0:
            continue
        new = rows[~seen[rows]]
        add = int(lengths[new].sum())
        # a query whose rows are all in the group's union joins it at no decoding cost, even when one
        # request alone exceeds the budget (long documents: every query of an eval over 98 documents of
        # 8k tokens asks for the same ~500k vectors, which were decoded once per query before)
        if group and add and (vecs + add) * dim > COLBERT_DECODE_BUDGET:
            flush()
            new, add = np.unique(rows), int(lengths[np.unique(rows)].sum())
        seen[new] = True
        vecs += add
        group.append(j)
    flush()
    return out


def _rank(rows: np.ndarray, scores: np.ndarray, comp: dict[str, np.ndarray], k: int) -> list[Hit]:
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((rows, -scores))[:k]
    return [(int(rows[j]), float(scores[j]), {m: float(v[j]) for m, v in comp.items()}) for j in order]
