"""Dense part of the index: the unit vectors ``[N, H]`` and a faiss inner-product index over them.

The float32 vectors are always kept (memory-mapped ``dense.npy``): they give exact dense scores
for any document (hybrid re-ranking) and rebuild the faiss index. ``kind``:

* ``"flat"`` (default) — ``IndexFlatIP``, exact; built from the vectors when first searched, not stored;
* ``"hnsw"`` — ``IndexHNSWFlat`` (``hnsw_m`` links, ``ef_construction``, ``ef_search``), approximate, stored;
* ``"ivf"`` — ``IndexIVFFlat`` (``ivf_nlist`` lists, default ``4·√N``, ``ivf_nprobe``), approximate, stored;
  trained on the vectors of the first ``add``.

faiss row numbers are the index's internal row numbers; deleted rows are filtered inside faiss
with an ``IDSelectorBitmap`` of the live rows.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from ..scoring import dense_scores

KINDS = ("flat", "hnsw", "ivf")
DEFAULTS: dict[str, Any] = {"kind": "flat", "hnsw_m": 32, "ef_construction": 200, "ef_search": 128,
                            "ivf_nlist": None, "ivf_nprobe": 16}


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    out = dict(DEFAULTS)
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown dense index options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    out.update(opts)
    if out["kind"] not in KINDS:
        raise ValueError(f"dense index kind {out['kind']!r}: expected one of {KINDS}")
    return out


class DenseIndex:
    """Vectors ``[N, H]`` float32 plus a lazily built or loaded faiss index over them."""

    def __init__(self, dim: int, options: dict[str, Any], vectors: np.ndarray | None = None,
                 faiss_index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.opts = check_options(options)
        self.vectors = vectors if vectors is not None else np.zeros((0, dim), np.float32)
        self._faiss = faiss_index
        self.dirty = vectors is None  # vectors differ from the committed file

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def stored_index(self) -> bool:
        """Whether the faiss index is saved beside the vectors (approximate kinds)."""
        return self.opts["kind"] != "flat"

    def add(self, vecs: np.ndarray) -> None:
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"dense vectors of shape {vecs.shape}; this index holds {self.dim}-d vectors")
        if self._faiss is not None or self.stored_index:
            self._index().add(vecs)  # the faiss index grows incrementally
        self.vectors = np.concatenate([self.vectors, vecs]) if len(self.vectors) else vecs
        self.dirty = True

    def keep_rows(self, rows: np.ndarray) -> None:
        """Drop every row not in ``rows`` (compaction); approximate indexes are rebuilt."""
        self.vectors = np.ascontiguousarray(self.vectors[rows])
        self._faiss = None
        if self.stored_index and len(self.vectors):
            self._index().add(self.vectors)
        self.dirty = True

    def _index(self) -> faiss.Index:
        if self._faiss is None:
            kind = self.opts["kind"]
            if kind == "flat":
                self._faiss = faiss.IndexFlatIP(self.dim)
                if len(self.vectors):
                    self._faiss.add(np.ascontiguousarray(self.vectors, dtype=np.float32))
            elif kind == "hnsw":
                idx = faiss.IndexHNSWFlat(self.dim, int(self.opts["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
                idx.hnsw.efConstruction = int(self.opts["ef_construction"])
                self._faiss = idx
            else:
                self._faiss = None  # IVF is created on the first add, when there is data to train on
                return _LazyIVF(self)
        return self._faiss

    def search(self, q: np.ndarray, k: int, live: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product for queries ``q [B, H]`` → (scores ``[B, k]``, rows ``[B, k]``).

        Missing results (fewer live rows than ``k``) have row -1. ``live`` is a bool mask over rows
        (``None``: all live).
        """
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query dense vectors of shape {q.shape}; this index holds {self.dim}-d vectors")
        if len(self.vectors) == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, len(self.vectors))
        index = self._index()
        params, keepalive = self._params(live)
        scores, rows = index.search(q, k, params=params) if params is not None else index.search(q, k)
        del keepalive  # the bitmap and selector must outlive the search call
        return scores, rows

    def _params(self, live: np.ndarray | None) -> tuple[Any, tuple]:
        """faiss search parameters (``None`` when defaults do) and the objects they point into."""
        kind = self.opts["kind"]
        sel = bitmap = None
        if live is not None and not live.all():
            bitmap = np.packbits(live.astype(np.uint8), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(bitmap))
        if kind == "hnsw":
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(self.opts["ef_search"])
        elif kind == "ivf":
            p = faiss.SearchParametersIVF()
            p.nprobe = int(self.opts["ivf_nprobe"])
        elif sel is None:
            return None, ()
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p, (sel, bitmap)

    def scores(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact dense scores of query ``q [H]`` against ``rows`` → ``[len(rows)]`` (core's ``dense_scores``)."""
        if len(rows) == 0:
            return np.zeros(0, np.float32)
        return dense_scores(q, np.asarray(self.vectors[np.asarray(rows)], dtype=np.float32))

    def serialize(self) -> np.ndarray | None:
        """The faiss index as bytes (approximate kinds only), for ``dense.faiss``."""
        if not self.stored_index:
            return None
        return faiss.serialize_index(self._index_ready())

    def _index_ready(self) -> faiss.Index:
        idx = self._index()
        if isinstance(idx, _LazyIVF):  # nothing added yet: an empty, untrained IVF index
            idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), 1, faiss.METRIC_INNER_PRODUCT)
        return idx

    @staticmethod
    def deserialize(data: np.ndarray) -> faiss.Index:
        return faiss.deserialize_index(np.asarray(data))


class _LazyIVF:
    """Stands in for an IVF index until the first ``add`` gives vectors to train the quantiser."""

    def __init__(self, owner: DenseIndex) -> None:
        self.owner = owner

    def add(self, vecs: np.ndarray) -> None:
        o = self.owner
        n = len(vecs)
        nlist = o.opts["ivf_nlist"] or max(1, int(4 * math.sqrt(n)))
        if n < nlist:
            raise ValueError(f"IVF with {nlist} lists needs at least {nlist} vectors in the first add, got {n}; "
                             "lower ivf_nlist or use kind='flat'")
        quantizer = faiss.IndexFlatIP(o.dim)
        idx = faiss.IndexIVFFlat(quantizer, o.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(vecs)
        idx.add(vecs)
        o._faiss = idx  # faiss' Python wrapper keeps `quantizer` alive through the index

    def search(self, q: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
