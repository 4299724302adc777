"""What every vector-database backend shares: the ``VectorStore`` protocol, id mapping, the model
fingerprint check, input checks and the search pipeline of :mod:`m3embed.index.search`.

A backend supplies three primitives — batched top-k over one field (``_topk``), exact scores of
given documents for one query (``_exact``) and, optionally, modes the engine fuses itself
(``_engine``) — and :class:`StoreBase` runs every mode with the same candidate depths, weights and
fusion as ``M3Index`` (scores from :mod:`m3embed.scoring`, never re-implemented here). Ties are
broken by document id (``M3Index`` breaks them by insertion order).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..index.core import (
    ModelMismatchError,
    SearchHit,
    _check_model,
    check_query_output,
    check_query_texts,
    encode_queries,
    model_fingerprint,
)
from ..index.search import DEPTHS, MODES, RRF_K, _depth, fusion_weights, needs
from ..output import ColbertVectors, LexicalWeights, M3Output
from ..scoring import maxsim_packed, reciprocal_rank_fusion, weighted_sum

if TYPE_CHECKING:
    from ..model import M3Model

__all__ = ["MODES", "BackendError", "BackendUnavailableError", "ModelMismatchError", "SearchHit", "StoreBase",
           "VectorStore", "check_ids", "point_id"]

FORMAT_VERSION = 1  # of the metadata a backend keeps beside its collection
#: uuid5 namespaces: document ids → point ids, and (document id, chunk) → ids of extra ColBERT chunks
ID_NAMESPACE = uuid.UUID("5d0b8f4e-93c5-4a44-8e51-2f8a7f0b6c31")
CHUNK_NAMESPACE = uuid.UUID("a7c2e9d1-0f4b-4c8e-b3a6-91d57e2c4f08")
FUSIONS = ("auto", "engine", "client")

Hit = tuple[str, float, dict[str, float]]  # (document id, score, component scores)


class BackendError(RuntimeError):
    """The database refused or failed an operation (the message names the backend and collection)."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The database cannot be reached (wrong URI, server down, timeout)."""


def missing_extra(module: str, extra: str, error: ImportError) -> ImportError:
    return ImportError(f"the {extra} backend needs the {module!r} package: pip install 'm3embed[{extra}]' ({error})")


# ---------------------------------------------------------------------------- protocol
@runtime_checkable
class VectorStore(Protocol):
    """A collection of documents' dense, lexical and ColBERT vectors, searchable like ``M3Index``."""

    backend: str
    fingerprint: dict[str, Any]

    def add(self, ids: Sequence[str], encoded: M3Output, texts: Sequence[str | None] | None = None,
            metadata: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        """Insert or replace (upsert by id) documents; ``encoded`` holds one row per id."""

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; unknown ids are ignored. Returns how many were present."""

    def count(self) -> int:
        """Number of documents."""

    def search(self, queries: Sequence[str] | str | M3Output, k: int = 10, mode: str = "all",
               **options: Any) -> list[list[SearchHit]]:
        """Top-``k`` documents per query, best first, as ``M3Index.search``."""

    def close(self) -> None:
        """Release the connection (or lock)."""


# ---------------------------------------------------------------------------- ids
def point_id(doc_id: str) -> str:
    """The database id of a document: ``uuid5`` of its id (Qdrant needs ints or UUIDs; both backends use it
    so that no id character ever reaches a filter expression). The original id is stored beside it."""
    return str(uuid.uuid5(ID_NAMESPACE, doc_id))


def chunk_point_id(doc_id: str, chunk: int) -> str:
    """The id of extra ColBERT chunk ``chunk`` (≥ 1) of a long document."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{chunk}:{doc_id}"))


def check_ids(ids: Sequence[str], *, max_bytes: int) -> list[str]:
    """Ids as a list; ``TypeError`` / ``ValueError`` naming the first bad one (not a str, empty, NUL,
    not encodable as UTF-8, longer than ``max_bytes`` bytes, repeated in the batch)."""
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of str, not one str")
    out = list(ids)
    seen: set[str] = set()
    for i, d in enumerate(out):
        if not isinstance(d, str):
            raise TypeError(f"id at index {i} is {type(d).__name__}, expected str")
        if not d:
            raise ValueError(f"id at index {i} is empty")
        if "\x00" in d:
            raise ValueError(f"id at index {i} ({d!r}) contains a NUL character, which the backends cannot store")
        try:
            n = len(d.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise ValueError(f"id at index {i} ({d!r}) is not valid Unicode ({e.reason})") from None
        if n > max_bytes:
            raise ValueError(f"id at index {i} ({d[:40]!r}…) is {n} bytes in UTF-8; this collection allows "
                             f"{max_bytes} (id_max_bytes)")
        if d in seen:
            raise ValueError(f"duplicate id {d!r} at index {i} of this batch")
        seen.add(d)
    return out


# ---------------------------------------------------------------------------- fingerprints and input checks
def resolve_fingerprint(model: M3Model | Mapping[str, Any]) -> dict[str, Any]:
    """``model_fingerprint(model)``, or a dict with positive int ``hidden_size``, ``colbert_dim``, ``vocab_size``."""
    if not isinstance(model, Mapping):
        return model_fingerprint(model)
    fp = {"name": "", "hash": "", **dict(model)}
    for key in ("hidden_size", "colbert_dim", "vocab_size"):
        if isinstance(fp.get(key), bool) or not isinstance(fp.get(key), int) or fp[key] <= 0:
            raise ValueError(f"model fingerprint needs a positive integer {key!r}")
    return fp


def check_fingerprint(stored: Mapping[str, Any], given: Mapping[str, Any], *, strict: bool, where: str) -> None:
    """``ModelMismatchError`` naming ``where`` when dimensions (or, ``strict``, the weights hash) differ."""
    try:
        _check_model(dict(stored), dict(given), strict=strict)
    except ModelMismatchError as e:
        raise ModelMismatchError(f"{where}: {e}") from None


def metadata_blob(fp: Mapping[str, Any], **extra: Any) -> str:
    """The JSON a backend stores with its collection: format version, model fingerprint, layout options."""
    return json.dumps({"m3embed": FORMAT_VERSION, "model": dict(fp), **extra}, sort_keys=True)


def parse_metadata_blob(text: str | None, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(text or "")
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or "m3embed" not in meta or not isinstance(meta.get("model"), dict):
        raise BackendError(f"{where}: exists but was not created by m3embed (no m3embed metadata); "
                           "pick another collection name")
    if meta["m3embed"] != FORMAT_VERSION:
        raise BackendError(f"{where}: m3embed metadata format {meta['m3embed']}, this version reads {FORMAT_VERSION}")
    return meta


def check_encoded(encoded: M3Output, n: int, fp: Mapping[str, Any], *, colbert: bool) -> None:
    """``encoded`` has ``n`` rows of every representation the store keeps, with the store's dimensions."""
    if not isinstance(encoded, M3Output):
        raise TypeError(f"encoded must be an M3Output, got {type(encoded).__name__}")
    if len(encoded) != n:
        raise ValueError(f"{n} ids but {len(encoded)} encoded documents")
    if encoded.dense is None or encoded.lexical is None:
        raise ValueError("encoded documents need dense vectors and lexical weights "
                         "(encode with return_dense=True, return_sparse=True)")
    name = fp.get("name") or "?"
    if encoded.dense.ndim != 2 or encoded.dense.shape[1] != fp["hidden_size"]:
        raise ModelMismatchError(f"dense vectors have shape {encoded.dense.shape}; this collection holds "
                                 f"{fp['hidden_size']}-d vectors (model {name})")
    if encoded.lexical.vocab_size != fp["vocab_size"]:
        raise ModelMismatchError(f"lexical weights over {encoded.lexical.vocab_size} ids; this collection uses "
                                 f"{fp['vocab_size']} (model {name})")
    if colbert:
        if encoded.colbert is None:
            raise ValueError("this collection stores ColBERT vectors: encode with return_colbert=True "
                             "(or create it with colbert=False)")
        if encoded.colbert.data.ndim != 2 or encoded.colbert.data.shape[1] != fp["colbert_dim"]:
            raise ModelMismatchError(f"ColBERT vectors of shape {encoded.colbert.data.shape}; this collection "
                                     f"holds {fp['colbert_dim']}-d vectors (model {name})")


def check_side(name: str, seq: Sequence[Any] | None, n: int) -> list[Any] | None:
    if seq is None:
        return None
    out = list(seq)
    if len(out) != n:
        raise ValueError(f"{n} ids but {len(out)} {name}")
    if name == "metadata":
        for i, m in enumerate(out):
            if m is not None and not isinstance(m, Mapping):
                raise TypeError(f"metadata at index {i} is {type(m).__name__}, expected a dict")
    return out


# ---------------------------------------------------------------------------- small helpers
def take_rows(out: M3Output, rows: Sequence[int] | np.ndarray) -> M3Output:
    """An ``M3Output`` of the given rows (copies)."""
    rows = np.asarray(rows, dtype=np.int64)
    dense = out.dense[rows] if out.dense is not None else None
    lex = None
    if out.lexical is not None:
        lw = out.lexical
        a, b = lw.indptr[rows], lw.indptr[rows + 1]
        take = _ranges(a, b)
        lex = LexicalWeights(np.concatenate([[0], np.cumsum(b - a)]).astype(np.int64), lw.ids[take],
                             lw.weights[take], lw.vocab_size)
    col = None
    if out.colbert is not None:
        cv = out.colbert
        a, b = cv.offsets[rows], cv.offsets[rows + 1]
        col = ColbertVectors(cv.data[_ranges(a, b)], np.concatenate([[0], np.cumsum(b - a)]).astype(np.int64))
    return M3Output(dense=dense, lexical=lex, colbert=col)


def _ranges(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(x, y, dtype=np.int64) for x, y in zip(a.tolist(), b.tolist(), strict=True)])


def colbert_scores(q: np.ndarray, mats: Sequence[np.ndarray]) -> np.ndarray:
    """MaxSim of one query ``[n_q, D]`` against each matrix of ``mats`` (``m3embed.scoring.maxsim_packed``)."""
    if not mats:
        return np.zeros(0, np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in mats])]).astype(np.int64)
    dim = q.shape[1]
    data = np.concatenate([np.asarray(m, np.float32).reshape(-1, dim) for m in mats])
    return maxsim_packed(q, data, offsets)


def rank(ids: Sequence[str], scores: np.ndarray, comp: Mapping[str, np.ndarray], k: int) -> list[Hit]:
    """Best ``k`` of ``ids`` by ``scores`` (ties by id), with their component scores."""
    if len(ids) == 0:
        return []
    arr = np.asarray(ids, dtype=object).astype(str)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((arr, -scores))[:k]
    return [(str(arr[j]), float(scores[j]), {m: float(v[j]) for m, v in comp.items()}) for j in order]


def union(*lists: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(x for lst in lists for x in lst))


# ---------------------------------------------------------------------------- the shared search
class StoreBase:
    """Search (every mode) and query encoding on top of a backend's primitives."""

    backend = "?"
    #: modes whose fusion the engine itself computes (``fusion="engine"``; "auto" picks them)
    engine_modes: frozenset[str] = frozenset()
    fingerprint: dict[str, Any]
    has_colbert: bool = True
    model: M3Model | None = None
    where: str = "?"

    # -- primitives a backend implements
    def _topk(self, field: str, q: M3Output, depth: int) -> list[tuple[list[str], np.ndarray]]:
        """Per query, the ``depth`` best documents by ``field`` ("dense" | "sparse"), best first;
        sparse lists hold only documents with a positive score."""
        raise NotImplementedError

    def _exact(self, q: M3Output, i: int, ids: list[str], fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Exact scores of query ``i`` against ``ids`` for each of ``fields`` ("dense" | "sparse" | "colbert")."""
        raise NotImplementedError

    def _engine(self, q: M3Output, k: int, mode: str, w: tuple[float, float, float], dd: int, sd: int,
                rd: int) -> list[list[Hit]]:
        raise NotImplementedError

    def _colbert_many(self, q: M3Output, requests: list[tuple[int, list[str]]]) -> list[np.ndarray]:
        """Exact ColBERT scores for each ``(query i, ids)`` request (a backend that fetches token vectors
        overrides this to fetch the union of a batch's candidates once)."""
        return [self._exact(q, i, ids, ("colbert",))["colbert"] for i, ids in requests]

    def _payloads(self, ids: list[str]) -> dict[str, tuple[str | None, dict | None]]:
        """Stored text and metadata of ``ids`` (missing ones may be left out)."""
        raise NotImplementedError

    # -- search
    def search(self, queries: Sequence[str] | str | M3Output, k: int = 10, mode: str = "all", *,
               model: M3Model | None = None, weights: Sequence[float] | None = None, dense_depth: int | None = None,
               sparse_depth: int | None = None, rerank_depth: int | None = None, fusion: str = "auto",
               with_payload: bool = True, batch_size: int = 32, max_length: int = 512,
               check_model: bool = True) -> list[list[SearchHit]]:
        """Top-``k`` documents per query, best first — ``M3Index.search``'s modes, depths and weights.

        ``fusion``: "client" runs every mode as :mod:`m3embed.index.search` does (the engine gives the
        candidate lists and exact scores, the fusion is computed here, so results equal ``M3Index``'s);
        "engine" lets the database fuse the modes it can (see the backend's ``engine_modes``); "auto"
        (default) uses the engine where it can. ``with_payload=False`` skips fetching texts and metadata.
        """
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: expected one of {FUSIONS}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        need = needs(mode, self.has_colbert)
        if "colbert" in need and not self.has_colbert and mode != "rrf":
            raise ValueError(f"mode {mode!r} needs ColBERT vectors, but {self.where} was created with colbert=False")
        if fusion == "engine" and mode not in self.engine_modes:
            raise ValueError(f"the {self.backend} engine cannot fuse mode {mode!r} itself; "
                             f"engine modes: {sorted(self.engine_modes)} (use fusion='client' or 'auto')")
        q = self._queries(queries, need, model, batch_size, max_length, check_model)
        if len(q) == 0:
            return []
        w = fusion_weights(weights, self.fingerprint)
        k = int(k)
        dd, sd, rd = DEPTHS[mode]
        dd = _depth("dense_depth", dense_depth, dd, k)
        sd = _depth("sparse_depth", sparse_depth, sd, k)
        rd = _depth("rerank_depth", rerank_depth, rd, k)
        if fusion != "client" and mode in self.engine_modes:
            hits = self._engine(q, k, mode, w, dd, sd, rd)
        else:
            hits = self._client(q, k, mode, w, dd, sd, rd)
        docs: dict[str, tuple[str | None, dict | None]] = {}
        if with_payload:
            docs = self._payloads(union(*[[h[0] for h in per] for per in hits]))
        return [[SearchHit(d, s, *docs.get(d, (None, None)), comp) for d, s, comp in per] for per in hits]

    def _queries(self, queries: Sequence[str] | str | M3Output, need: set[str], model: M3Model | None,
                 batch_size: int, max_length: int, check_model: bool) -> M3Output:
        if isinstance(queries, M3Output):
            check_query_output(self.fingerprint, queries, need)
            return queries
        if isinstance(queries, str):
            queries = [queries]
        queries = list(queries)
        check_query_texts(queries)
        if model is None:
            model = self.model
            if model is None:
                raise ValueError(f"{self.where}: no model to encode the queries: pass model=… to search or open_store "
                                 "(or pass pre-encoded queries)")
        elif model is not self.model:
            check_fingerprint(self.fingerprint, model_fingerprint(model), strict=check_model, where=self.where)
        return encode_queries(queries, need, model, batch_size=batch_size, max_length=max_length)

    def _client(self, q: M3Output, k: int, mode: str, w: tuple[float, float, float], dd: int, sd: int,
                rd: int) -> list[list[Hit]]:
        """The modes of :func:`m3embed.index.search.run`, fused here from the engine's lists and scores."""
        dd_rank = dd
        if mode == "multivec":
            dd = max(rd, k)
        if mode == "rrf" and self.has_colbert:
            dd = max(dd, rd)
        nq = len(q)
        empty: tuple[list[str], np.ndarray] = ([], np.zeros(0, np.float32))
        dense_hits = self._topk("dense", q, dd) if dd else [empty] * nq
        sparse_hits = self._topk("sparse", q, sd) if sd else [empty] * nq
        # 1. candidates per query; 2. ColBERT scores of every query's candidates together; 3. fusion
        cands: list[list[str]] = []
        for i in range(nq):
            d_ids, s_ids = dense_hits[i][0], sparse_hits[i][0]
            if mode == "multivec":
                cands.append(d_ids[: max(rd, k)])
            elif mode in ("dense+sparse", "all"):
                cands.append(union(d_ids, s_ids))
            elif mode == "rrf" and self.has_colbert:
                cands.append(d_ids[:rd])
            else:
                cands.append([])
        colbert: list[np.ndarray | None] = [None] * nq
        if mode in ("multivec", "all") or (mode == "rrf" and self.has_colbert):
            todo = [i for i in range(nq) if cands[i]]
            for i, sc in zip(todo, self._colbert_many(q, [(i, cands[i]) for i in todo]), strict=True):
                colbert[i] = sc
        out: list[list[Hit]] = []
        for i in range(nq):
            (d_ids, d_s), (s_ids, s_s) = dense_hits[i], sparse_hits[i]
            ids = cands[i]
            col = colbert[i] if colbert[i] is not None else np.zeros(len(ids), np.float32)
            if mode == "dense":
                hits = [(d, float(s), {"dense": float(s)}) for d, s in zip(d_ids[:k], d_s[:k], strict=True)]
            elif mode == "sparse":
                hits = [(d, float(s), {"sparse": float(s)}) for d, s in zip(s_ids[:k], s_s[:k], strict=True)]
            elif mode == "multivec":
                hits = rank(ids, col, {"colbert": col}, k)
            elif mode in ("dense+sparse", "all"):
                wts = {"dense": w[0], "sparse": w[1]}
                comp = self._exact(q, i, ids, ("dense", "sparse"))
                if mode == "all":
                    wts["colbert"] = w[2]
                    comp["colbert"] = col
                hits = rank(ids, weighted_sum(comp, wts), comp, k)
            else:  # rrf
                rankings = [d_ids[:dd_rank], s_ids]
                if self.has_colbert:
                    rankings.append([h[0] for h in rank(ids, col, {"colbert": col}, len(ids))])
                fused = reciprocal_rank_fusion(rankings, k=RRF_K)[:k]
                hits = [(str(d), float(s), {"rrf": float(s)}) for d, s in fused]
            out.append(hits)
        return out

    # -- context manager
    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> StoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def query_rows(q: M3Output, i: int) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None,
                                              np.ndarray | None]:
    """Query ``i``'s dense vector, (token ids, weights) and ColBERT matrix (``None`` where absent)."""
    dense = q.dense[i] if q.dense is not None else None
    lex = q.lexical.row(i) if q.lexical is not None else None
    col = q.colbert[i] if q.colbert is not None else None
    return dense, lex, col
