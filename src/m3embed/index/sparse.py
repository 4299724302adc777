"""Sparse (lexical) part of the index: a forward CSR of documents and an impact-scored inverted index.

* forward — ``[N, V]`` CSR of the exact float32 weights: exact lexical scores of any document;
* inverted — per token id, the documents holding it and their impacts (``post_indptr [V+1]``,
  ``post_docs [nnz]`` int32, ``post_w [nnz]``), built from the forward CSR (a CSR → CSC transpose).
  Impacts are float32 (exact), or quantised as the paper's Lucene runs, ``ceil(100·w)`` in uint8
  (saturating at 255) or uint16.

Top-k is exact. A few queries, ``algorithm="taat"``: term-at-a-time accumulation vectorised with
NumPy — the postings of a query's terms are concatenated, scaled by the query weights and summed
per document with one ``np.bincount`` (document ids offset by ``query × N`` for a small group).
``algorithm="maxscore"``: the same accumulation term by term in decreasing order of each term's
upper bound ``w_q · max impact``, with MaxScore's safe early termination (Turtle & Flood 1995): once
the k-th best partial score θ exceeds the bound of the terms still to read, no unseen document can
enter the top k, and the remaining (long, low-impact) posting lists are only probed for the few
candidates whose score plus that bound still reaches θ (binary search in the sorted postings).
Term-at-a-time is the default: on the 100k benchmark MaxScore was 1.3–3× slower (query term bounds
are flat, so θ overtakes the remaining bound only after most postings are read, and each θ costs
a pass over the accumulators); MaxScore can win when a few rare terms dominate a query.
Many queries (``batch_threshold``, 8): one scipy sparse product ``Q @ inverted`` (the inverted
index read as a ``[V, N]`` CSR matrix), which is faster per query in batches.
With quantised impacts the top-k set is chosen on the quantised scores and then re-scored and
re-ordered with the exact weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..output import LexicalWeights
from ..scoring import lexical_scores

DTYPES = {"float32": np.float32, "uint8": np.uint8, "uint16": np.uint16}
DEFAULTS: dict[str, Any] = {"dtype": "float32"}
ALGORITHMS = ("taat", "maxscore")


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown sparse index options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    out = dict(DEFAULTS, **opts)
    if out["dtype"] not in DTYPES:
        raise ValueError(f"sparse impact dtype {out['dtype']!r}: expected one of {sorted(DTYPES)}")
    return out


def quantize(w: np.ndarray, dtype: str) -> np.ndarray:
    """Impacts in ``dtype``: float32 as is, integers as ``ceil(100·w)`` clipped to the type's range."""
    if dtype == "float32":
        return np.asarray(w, dtype=np.float32)
    top = np.iinfo(DTYPES[dtype]).max
    return np.clip(np.ceil(np.asarray(w, dtype=np.float64) * 100.0), 0, top).astype(DTYPES[dtype])


class SparseIndex:
    """Forward CSR + inverted index over token ids ``0 … vocab_size-1``."""

    def __init__(self, vocab_size: int, options: dict[str, Any], forward: sp.csr_matrix | None = None,
                 inverted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        self.vocab_size = vocab_size
        self.opts = check_options(options)
        self.forward = forward if forward is not None else sp.csr_matrix((0, vocab_size), dtype=np.float32)
        self._inv = inverted
        self._inv_csr: sp.csr_matrix | None = None  # the inverted index as a [V, N] matrix (batched search)
        self._max_impact: np.ndarray | None = None  # [V] largest impact of each posting list (MaxScore)
        self.dirty = forward is None

    def __len__(self) -> int:
        return self.forward.shape[0]

    @property
    def nnz(self) -> int:
        return int(self.forward.nnz)

    def add(self, lex: LexicalWeights) -> None:
        if lex.vocab_size != self.vocab_size:
            raise ValueError(f"lexical weights over a vocabulary of {lex.vocab_size} ids; this index uses "
                             f"{self.vocab_size}")
        new = lex.to_csr().astype(np.float32)
        self.forward = sp.vstack([self.forward, new], format="csr") if len(self) else new
        self._inv = self._inv_csr = self._max_impact = None
        self.dirty = True

    def keep_rows(self, rows: np.ndarray) -> None:
        self.forward = self.forward[rows]
        self._inv = self._inv_csr = self._max_impact = None
        self.dirty = True

    # ------------------------------------------------------------------ inverted index
    def inverted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(``post_indptr [V+1]`` int64, ``post_docs [nnz]`` int32, ``post_w [nnz]``), built on demand."""
        if self._inv is None:
            n = len(self)
            # the transpose of a CSR with sorted columns is the postings lists, doc ids ascending
            csc = sp.csc_matrix(self.forward, dtype=np.float32)
            csc.sort_indices()
            self._inv = (csc.indptr.astype(np.int64), csc.indices.astype(np.int32 if n < 2**31 else np.int64),
                         quantize(csc.data, self.opts["dtype"]))
        return self._inv

    def max_impacts(self) -> np.ndarray:
        """Largest impact of each token's posting list ``[V]`` float64 (0 for an empty list)."""
        if self._max_impact is None:
            pi, _, pw = self.inverted()
            out = np.zeros(self.vocab_size, dtype=np.float64)
            nonempty = np.flatnonzero(np.diff(pi) > 0)
            if len(nonempty):
                out[nonempty] = np.maximum.reduceat(np.asarray(pw, dtype=np.float64), pi[nonempty])
            self._max_impact = out
        return self._max_impact

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything to store: forward CSR and inverted index."""
        pi, pd, pw = self.inverted()
        f = self.forward
        return {"sparse.doc_indptr.npy": f.indptr.astype(np.int64), "sparse.doc_tokens.npy": f.indices.astype(np.int32),
                "sparse.doc_weights.npy": f.data.astype(np.float32), "sparse.post_indptr.npy": pi,
                "sparse.post_docs.npy": pd, "sparse.post_weights.npy": pw}

    @classmethod
    def from_arrays(cls, vocab_size: int, options: dict[str, Any], a: dict[str, np.ndarray], n: int) -> SparseIndex:
        indptr, tokens, weights = a["sparse.doc_indptr.npy"], a["sparse.doc_tokens.npy"], a["sparse.doc_weights.npy"]
        if len(indptr) != n + 1 or indptr[-1] != len(tokens) or len(tokens) != len(weights):
            raise ValueError(f"forward CSR of {len(indptr) - 1} rows / {len(tokens)} entries does not match "
                             f"{n} documents")
        forward = sp.csr_matrix((weights, tokens, indptr), shape=(n, vocab_size), copy=False)
        inv = (a["sparse.post_indptr.npy"], a["sparse.post_docs.npy"], a["sparse.post_weights.npy"])
        if len(inv[0]) != vocab_size + 1 or inv[0][-1] != len(inv[1]) or len(inv[1]) != len(tokens):
            raise ValueError("inverted index does not match the forward index")
        out = cls(vocab_size, options, forward, inv)
        out.dirty = False
        return out

    # ------------------------------------------------------------------ search
    def search(self, q: LexicalWeights, k: int, live: np.ndarray | None, *, batch_threshold: int = 8,
               chunk_postings: int = 1 << 24, algorithm: str = "taat") -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact top-``k`` documents with a positive score for each query → [(rows, scores)], best first.

        Fewer than ``batch_threshold`` queries: ``algorithm`` ``"taat"`` (term-at-a-time ``np.bincount``
        over the concatenated postings, in groups of at most ``chunk_postings`` entries; faster in our
        measurements) or ``"maxscore"`` (per query, early termination). More: one sparse product of the queries with the
        inverted index (scipy), whose result holds only the matched documents. All three give the same
        documents.
        """
        if q.vocab_size != self.vocab_size:
            raise ValueError(f"query lexical weights over {q.vocab_size} ids; this index uses {self.vocab_size}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"sparse search algorithm {algorithm!r}: expected one of {ALGORITHMS}")
        n = len(self)
        nq = len(q)
        results: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * nq
        if n == 0 or k <= 0 or nq == 0:
            return results
        if nq >= batch_threshold:
            return self._search_product(q, k, live)
        if algorithm == "maxscore":
            return [self._maxscore(q, i, k, live) for i in range(nq)]
        pi, pd, pw = self.inverted()
        group: list[int] = []
        budget = 0
        for i in range(nq + 1):
            if i < nq:
                ids, _ = q.row(i)
                cost = int((pi[ids + 1] - pi[ids]).sum()) if len(ids) else 0
            if i == nq or (group and budget + cost > chunk_postings):
                acc = self._accumulate(q, group, pi, pd, pw)
                for j, qi in enumerate(group):
                    if live is not None:
                        acc[j][~live] = 0.0
                    cand = np.flatnonzero(acc[j] > 0)
                    results[qi] = self._select(cand, acc[j][cand], k, q, qi)
                group, budget = [], 0
            if i < nq:
                group.append(i)
                budget += cost
        return results

    def _search_product(self, q: LexicalWeights, k: int, live: np.ndarray | None,
                        rows_per_step: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k of many queries from ``Q @ inverted`` (a ``[B, N]`` sparse result per step)."""
        if self._inv_csr is None:
            pi, pd, pw = self.inverted()
            self._inv_csr = sp.csr_matrix((pw, pd.astype(np.int64), pi), shape=(self.vocab_size, len(self)))
        qm = q.to_csr()
        out = []
        for s in range(0, len(q), rows_per_step):
            r = (qm[s : s + rows_per_step] @ self._inv_csr).tocsr()
            for j in range(r.shape[0]):
                a, b = r.indptr[j], r.indptr[j + 1]
                cand, vals = r.indices[a:b].astype(np.int64), r.data[a:b]
                keep = vals > 0
                if live is not None:
                    keep &= live[cand]
                out.append(self._select(cand[keep], vals[keep], k, q, s + j))
        return out

    def _maxscore(self, q: LexicalWeights, qi: int, k: int, live: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of query ``qi`` by term-at-a-time MaxScore (see the module doc)."""
        pi, pd, pw = self.inverted()
        n = len(self)
        ids, w = q.row(qi)
        ids = np.asarray(ids, dtype=np.int64)
        # the same products as the term-at-a-time path: float32 impacts × float32 query weight
        w = np.asarray(w, dtype=np.float32 if pw.dtype == np.float32 else np.float64)
        ub = self.max_impacts()[ids] * w
        keep = ub > 0
        ids, w, ub = ids[keep], w[keep], ub[keep]
        if len(ids) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        order = np.argsort(-ub, kind="stable")
        ids, w, ub = ids[order], w[order], ub[order]
        rest = np.concatenate([np.cumsum(ub[::-1])[::-1][1:], [0.0]])  # bound of the terms after each one
        lens = pi[ids + 1] - pi[ids]
        left = np.concatenate([np.cumsum(lens[::-1])[::-1][1:], [0]])  # postings after each term
        acc = np.zeros(n, dtype=np.float64)
        cand: np.ndarray | None = None  # candidates once no unseen document can reach the top k
        theta = -np.inf
        tries = 0
        for j, t in enumerate(ids.tolist()):
            d = pd[pi[t] : pi[t + 1]]
            v = pw[pi[t] : pi[t + 1]]
            if cand is None:
                acc[d] += v * w[j]  # a posting list holds each document once: plain fancy-index add
                # a threshold costs one pass over the N accumulators: worth it while ≥ N/4 postings remain
                # θ can beat the remaining bound only once the terms read outweigh the rest
                if rest[j] > 0 and 4 * left[j] >= n and ub[: j + 1].sum() > rest[j] and tries < 2:
                    tries += 1
                    seen = np.flatnonzero(acc)
                    if live is not None:
                        seen = seen[live[seen]]
                    if len(seen) >= k:
                        # over the scored documents only: np.partition is very slow on long runs of zeros
                        theta = float(np.partition(acc[seen], len(seen) - k)[len(seen) - k])
                    if theta > rest[j]:
                        cand = seen[acc[seen] + rest[j] >= theta]
            else:
                pos = np.searchsorted(d, cand)
                hit = pos < len(d)
                hit[hit] = d[pos[hit]] == cand[hit]
                acc[cand[hit]] += v[pos[hit]] * w[j]
                cand = cand[acc[cand] + rest[j] >= theta]  # the bound shrinks as terms are read
        pool = np.flatnonzero(acc > 0) if cand is None else cand[acc[cand] > 0]
        if live is not None:
            pool = pool[live[pool]]
        return self._select(pool, acc[pool], k, q, qi)

    def _accumulate(self, q: LexicalWeights, group: list[int], pi, pd, pw) -> np.ndarray:
        """Scores ``[len(group), N]`` (float64) of every document for the queries in ``group``."""
        n = len(self)
        docs, contrib = [], []
        for j, qi in enumerate(group):
            ids, w = q.row(qi)
            for t, wt in zip(ids.tolist(), w.tolist(), strict=True):
                a, b = pi[t], pi[t + 1]
                if a == b:
                    continue
                d = pd[a:b]
                docs.append(d if j == 0 else d.astype(np.int64) + j * n)
                contrib.append(pw[a:b] * np.float32(wt) if pw.dtype == np.float32 else pw[a:b] * wt)
        size = len(group) * n
        if not docs:
            return np.zeros((len(group), n))
        acc = np.bincount(np.concatenate(docs), weights=np.concatenate(contrib), minlength=size)
        return acc.reshape(len(group), n)

    def _select(self, cand: np.ndarray, vals: np.ndarray, k: int, q: LexicalWeights,
                qi: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` of the matched documents ``cand`` with scores ``vals``, best first (ties by row)."""
        if len(cand) > k:
            part = np.argpartition(-vals, k - 1)[:k]
            cand, vals = cand[part], vals[part]
        # with quantised impacts these chose the set; report and order by the exact weights
        exact = self.scores(q, qi, cand) if self.opts["dtype"] != "float32" else np.asarray(vals, np.float32)
        order = np.lexsort((cand, -exact))
        return cand[order].astype(np.int64), exact[order]

    def scores(self, q: LexicalWeights, qi: int, rows: np.ndarray) -> np.ndarray:
        """Exact lexical scores of query ``qi`` against ``rows`` → ``[len(rows)]`` (core's ``lexical_scores``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0, np.float32)
        ids, w = q.row(qi)
        qm = sp.csr_matrix((w.astype(np.float32), ids, [0, len(ids)]), shape=(1, self.vocab_size))
        return lexical_scores(qm, self.forward[rows])[0]
