"""Qdrant backend (``qdrant-client``): named vectors ``dense`` (Dot), ``sparse`` (token ids → weights)
and ``colbert`` (a multivector compared with MAX_SIM, no HNSW graph: it only re-ranks).

* Points: id = ``uuid5`` of the document id (:func:`~m3embed.backends.base.point_id`); payload
  ``doc_id`` (the original id), ``text``, ``metadata``, ``n_chunks``.
* Long documents: Qdrant caps one multivector at ``max_multivector_floats`` (1,048,576 floats: 1,024
  vectors of 1,024 dims). A longer ColBERT matrix is split: its first rows go to the point, the rest
  to points of the side collection ``<collection>__colbert_chunks`` (one per chunk, payload
  ``doc_id``, ``chunk``). Nothing is truncated: whenever such a document is a candidate, its exact
  MaxSim over the whole matrix is computed client-side from the stored chunks
  (``m3embed.scoring.maxsim_packed``) and replaces the engine's first-chunk score.
* Metadata (format version, model fingerprint, options) is the payload of one point of the side
  collection, with id :data:`META_ID`.

Qdrant's MAX_SIM is ColBERT's sum over query vectors; M3 averages (``m3embed.scoring.colbert_score``),
so engine ColBERT scores are divided by the number of query vectors (in the formula: the weight is).

Search (``engine_modes``): ``multivec`` is one query (prefetch dense top-``rerank_depth``, then
MAX_SIM over ``colbert``); ``dense+sparse`` and ``all`` are one query too: the dense and sparse
candidate prefetches are nested inside one prefetch per representation that re-scores the whole
candidate union exactly, and a formula query sums them with the weights, ``Σ w_m·s_m / Σ w_m``
(a candidate without a shared token gets sparse score 0, its exact value) — the same fused scores as
``M3Index``, computed by the engine. ``rrf`` is fused client-side (Qdrant's RRF counts ranks from 0
and fixes the constant differently). ``fusion="client"`` runs every mode with client-side fusion
over the engine's candidate lists and exact (filtered) scores.

Local mode (``path=…`` or ``location=":memory:"``) is qdrant-client's pure-Python re-implementation
of the engine (brute force, one process): good for tests and small collections, not for latency
numbers. The same code runs against a server with ``url="http://host:6333"`` (+ ``api_key``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..output import M3Output
from .base import (
    BackendError,
    BackendUnavailableError,
    Hit,
    StoreBase,
    check_encoded,
    check_fingerprint,
    check_ids,
    check_side,
    chunk_point_id,
    colbert_scores,
    metadata_blob,
    missing_extra,
    parse_metadata_blob,
    point_id,
    rank,
    resolve_fingerprint,
    union,
)

if TYPE_CHECKING:
    from ..model import M3Model

QDRANT_MAX_MULTIVECTOR_FLOATS = 1_048_576
META_ID = "00000000-0000-0000-0000-00000000a3e1"
CHUNKS_SUFFIX = "__colbert_chunks"


def _import():
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError as e:
        raise missing_extra("qdrant-client", "qdrant", e) from None
    return qdrant_client, models


class QdrantStore(StoreBase):
    """A Qdrant collection of M3 vectors (``open_store("qdrant", …)``).

    Connection: ``path`` (local mode, on disk), ``location=":memory:"`` (local, in memory),
    ``url`` + ``api_key`` (a server or Qdrant Cloud), or a ready ``client``. ``timeout`` (seconds)
    bounds every request; an unreachable server raises :class:`BackendUnavailableError`.
    Creation options (ignored when the collection exists): ``colbert`` (store token vectors),
    ``max_multivector_floats`` (the per-point cap, see the module doc), ``on_disk`` (vectors on disk),
    ``colbert_dtype`` ("float32", or "float16": half the memory on a server — values are rounded to
    float16, as ``M3Index``'s default codec does; the local mode keeps float32), ``id_max_bytes``.
    ``upsert_floats`` bounds the floats sent per upsert request.
    """

    backend = "qdrant"
    engine_modes = frozenset({"multivec", "dense+sparse", "all"})

    def __init__(self, *, collection: str = "m3embed", model: M3Model | Mapping[str, Any] | None = None,
                 path: str | None = None, location: str | None = None, url: str | None = None,
                 api_key: str | None = None, timeout: float = 10.0, client: Any = None, create: bool = True,
                 check_model: bool = True, colbert: bool = True,
                 max_multivector_floats: int = QDRANT_MAX_MULTIVECTOR_FLOATS, on_disk: bool = False,
                 colbert_dtype: str = "float32", id_max_bytes: int = 1024, upsert_floats: int = 1 << 20,
                 **client_options: Any) -> None:
        _, models = _import()
        self.m = models
        self.collection = collection
        self.chunks = collection + CHUNKS_SUFFIX
        self.upsert_floats = int(upsert_floats)
        self.model = None if model is None or isinstance(model, Mapping) else model
        self._local = client is None and url is None
        self._target = "a given client"
        self.client = client if client is not None else self._connect(path, location, url, api_key, timeout,
                                                                      client_options)
        self.where = f"qdrant collection {collection!r} ({self._target})"
        try:
            exists = self.client.collection_exists(collection)
        except Exception as e:
            raise self._unavailable(e) from None
        if exists:
            meta = self._read_meta()
            self.fingerprint = meta["model"]
            if model is not None:
                check_fingerprint(self.fingerprint, resolve_fingerprint(model), strict=check_model, where=self.where)
            self.has_colbert = bool(meta["colbert"])
            self.max_rows = int(meta["max_rows"])
            self.id_max_bytes = int(meta["id_max_bytes"])
        else:
            if not create:
                raise BackendError(f"{self.where}: no such collection (pass create=True and model=… to create it)")
            if model is None:
                raise ValueError(f"{self.where}: does not exist; pass model=… (an M3Model or a fingerprint dict) "
                                 "to create it")
            self.fingerprint = resolve_fingerprint(model)
            self.has_colbert = bool(colbert)
            dim = self.fingerprint["colbert_dim"]
            if max_multivector_floats < dim:
                raise ValueError(f"max_multivector_floats={max_multivector_floats} is below one {dim}-d vector")
            self.max_rows = int(max_multivector_floats) // dim
            self.id_max_bytes = int(id_max_bytes)
            if colbert_dtype not in ("float32", "float16"):
                raise ValueError(f"colbert_dtype {colbert_dtype!r}: expected 'float32' or 'float16'")
            self._create(on_disk, colbert_dtype)

    # ------------------------------------------------------------------ connection and collections
    def _connect(self, path, location, url, api_key, timeout, options) -> Any:
        qdrant_client, _ = _import()
        given = [x for x in (path, location, url) if x is not None]
        if len(given) > 1:
            raise ValueError("pass one of path=…, location=…, url=…")
        if url is not None:
            self._target = url
            client = qdrant_client.QdrantClient(url=url, api_key=api_key, timeout=max(1, math.ceil(timeout)),
                                                check_compatibility=False, **options)
            try:
                client.get_collections()  # fail now, within the timeout, if the server is not there
            except Exception as e:
                client.close()
                raise self._unavailable(e) from None
            return client
        if path is not None:
            self._target = f"local mode, {path}"
            return qdrant_client.QdrantClient(path=str(path), **options)
        self._target = "local mode, in memory"
        return qdrant_client.QdrantClient(location=location or ":memory:", **options)

    def _unavailable(self, e: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(f"qdrant at {self._target}: cannot reach the server "
                                       f"({type(e).__name__}: {str(e)[:300]})")

    def _create(self, on_disk: bool, colbert_dtype: str) -> None:
        m, fp = self.m, self.fingerprint
        dtype = m.Datatype.FLOAT16 if colbert_dtype == "float16" else m.Datatype.FLOAT32
        colbert_params = m.VectorParams(
            size=fp["colbert_dim"], distance=m.Distance.DOT, on_disk=on_disk, datatype=dtype,
            multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM),
            hnsw_config=m.HnswConfigDiff(m=0))  # re-ranking only: no graph
        vectors = {"dense": m.VectorParams(size=fp["hidden_size"], distance=m.Distance.DOT, on_disk=on_disk)}
        if self.has_colbert:
            vectors["colbert"] = colbert_params
        try:
            # the side collection first: a collection without its metadata point is never left behind
            if not self.client.collection_exists(self.chunks):
                self.client.create_collection(self.chunks, vectors_config={"colbert": colbert_params})
            self.client.upsert(self.chunks, points=[m.PointStruct(id=META_ID, vector={}, payload={
                "m3embed_meta": metadata_blob(fp, colbert=self.has_colbert, max_rows=self.max_rows,
                                              id_max_bytes=self.id_max_bytes)})], wait=True)
            self.client.create_collection(self.collection, vectors_config=vectors, sparse_vectors_config={
                "sparse": m.SparseVectorParams(index=m.SparseIndexParams(on_disk=on_disk))})
            if not self._local:  # local mode has no payload indexes (and warns)
                for coll in (self.collection, self.chunks):
                    self.client.create_payload_index(coll, "doc_id", m.PayloadSchemaType.KEYWORD)
        except Exception as e:
            raise BackendError(f"{self.where}: cannot create the collection ({type(e).__name__}: {e})") from None

    def _read_meta(self) -> dict[str, Any]:
        try:
            got = self.client.retrieve(self.chunks, [META_ID], with_payload=True) \
                if self.client.collection_exists(self.chunks) else []
        except Exception as e:
            raise BackendError(f"{self.where}: cannot read the m3embed metadata ({e})") from None
        blob = got[0].payload.get("m3embed_meta") if got else None
        return parse_metadata_blob(blob, self.where)

    def _call(self, what: str, fn, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (ValueError, TypeError):
            raise
        except Exception as e:
            name = type(e).__name__
            if "Connect" in name or "Timeout" in name or "Unavailable" in str(e)[:200]:
                raise self._unavailable(e) from None
            raise BackendError(f"{self.where}: {what} failed ({name}: {str(e)[:300]})") from None

    # ------------------------------------------------------------------ writing
    def add(self, ids: Sequence[str], encoded: M3Output, texts: Sequence[str | None] | None = None,
            metadata: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        """Upsert documents by id (a long ColBERT matrix is split into chunks, see the module doc)."""
        m = self.m
        ids = check_ids(ids, max_bytes=self.id_max_bytes)
        n = len(ids)
        check_encoded(encoded, n, self.fingerprint, colbert=self.has_colbert)
        texts = check_side("texts", texts, n)
        metadata = check_side("metadata", metadata, n)
        if n == 0:
            return
        points, chunk_points = [], []
        for i, d in enumerate(ids):
            vec: dict[str, Any] = {"dense": encoded.dense[i].astype(np.float32).tolist()}
            tok, w = encoded.lexical.row(i)
            if len(tok):
                vec["sparse"] = m.SparseVector(indices=tok.astype(np.int64).tolist(), values=w.astype(float).tolist())
            n_chunks = 0
            if self.has_colbert:
                mat = encoded.colbert[i]
                n_chunks = math.ceil(len(mat) / self.max_rows)
                if n_chunks:
                    vec["colbert"] = mat[: self.max_rows].astype(np.float32).tolist()
                for j in range(1, n_chunks):
                    part = mat[j * self.max_rows : (j + 1) * self.max_rows]
                    chunk_points.append(m.PointStruct(id=chunk_point_id(d, j), vector={"colbert": part.tolist()},
                                                      payload={"doc_id": d, "chunk": j}))
            payload = {"doc_id": d, "n_chunks": n_chunks, "text": texts[i] if texts is not None else None,
                       "metadata": dict(metadata[i]) if metadata is not None and metadata[i] is not None else None}
            points.append(m.PointStruct(id=point_id(d), vector=vec, payload=payload))
        # stale chunks of a re-added document go first; the document's point last, so that a point,
        # once visible, has all its chunks (an interrupted add is repaired by running it again)
        self._delete_chunks(ids)
        self._upsert(self.chunks, chunk_points)
        self._upsert(self.collection, points)

    def _upsert(self, coll: str, points: list[Any]) -> None:
        batch: list[Any] = []
        size = 0
        for p in points:
            f = sum(_floats(v) for v in p.vector.values())
            if batch and size + f > self.upsert_floats:
                self._call("upsert", self.client.upsert, coll, points=batch, wait=True)
                batch, size = [], 0
            batch.append(p)
            size += f
        if batch:
            self._call("upsert", self.client.upsert, coll, points=batch, wait=True)

    def _delete_chunks(self, ids: list[str]) -> None:
        m = self.m
        flt = m.Filter(must=[m.FieldCondition(key="doc_id", match=m.MatchAny(any=ids))])
        self._call("delete", self.client.delete, self.chunks, points_selector=m.FilterSelector(filter=flt), wait=True)

    def delete(self, ids: Sequence[str]) -> int:
        ids = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        if not ids:
            return 0
        present = self.existing(ids)
        self._call("delete", self.client.delete, self.collection,
                   points_selector=self.m.PointIdsList(points=[point_id(d) for d in ids]), wait=True)
        self._delete_chunks(ids)
        return len(present)

    def count(self) -> int:
        return int(self._call("count", self.client.count, self.collection, exact=True).count)

    def existing(self, ids: Sequence[str]) -> set[str]:
        ids = list(ids)
        out: set[str] = set()
        for s in range(0, len(ids), 1000):
            got = self._call("retrieve", self.client.retrieve, self.collection,
                             [point_id(d) for d in ids[s : s + 1000]], with_payload=["doc_id"])
            out.update(p.payload["doc_id"] for p in got)
        return out

    def flush(self) -> None:
        """Writes are acknowledged after they are applied (``wait=True``): nothing to do."""

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a client whose server is gone must not raise
            self.client.close()

    # ------------------------------------------------------------------ search primitives
    def _sparse(self, q: M3Output, i: int) -> Any | None:
        tok, w = q.lexical.row(i)
        if len(tok) == 0:
            return None
        return self.m.SparseVector(indices=tok.astype(np.int64).tolist(), values=w.astype(float).tolist())

    def _query_vec(self, field: str, q: M3Output, i: int) -> Any | None:
        """Query ``i``'s vector for ``field`` in the client's types (``None``: absent or empty)."""
        if getattr(q, {"dense": "dense", "sparse": "lexical", "colbert": "colbert"}[field]) is None:
            return None
        if field == "dense":
            return q.dense[i].astype(np.float32).tolist()
        if field == "sparse":
            return self._sparse(q, i)
        mat = q.colbert[i]
        return mat.astype(np.float32).tolist() if len(mat) else None

    def _batch(self, requests: list[Any]) -> list[list[Any]]:
        if not requests:
            return []
        res = self._call("query", self.client.query_batch_points, self.collection, requests=requests)
        return [r.points for r in res]

    def _topk(self, field: str, q: M3Output, depth: int) -> list[tuple[list[str], np.ndarray]]:
        m = self.m
        reqs, where = [], []
        for i in range(len(q)):
            v = self._query_vec(field, q, i)
            if v is not None:
                where.append(i)
                reqs.append(m.QueryRequest(query=v, using=field, limit=depth, with_payload=["doc_id"]))
        out: list[tuple[list[str], np.ndarray]] = [([], np.zeros(0, np.float32))] * len(q)
        for i, pts in zip(where, self._batch(reqs), strict=True):
            if field == "sparse":
                pts = [p for p in pts if p.score > 0]
            out[i] = ([p.payload["doc_id"] for p in pts], np.array([p.score for p in pts], np.float32))
        return out

    def _exact(self, q: M3Output, i: int, ids: list[str], fields: Sequence[str]) -> dict[str, np.ndarray]:
        m = self.m
        pos = {d: j for j, d in enumerate(ids)}
        out = {f: np.zeros(len(ids), np.float32) for f in fields}
        if not ids:
            return out
        flt = m.Filter(must=[m.HasIdCondition(has_id=[point_id(d) for d in ids])])
        reqs, names = [], []
        for f in fields:
            v = self._query_vec(f, q, i)
            if v is not None:  # an empty query side scores 0 everywhere
                reqs.append(m.QueryRequest(query=v, using=f, filter=flt, limit=len(ids),
                                           with_payload=["doc_id", "n_chunks"]))
                names.append(f)
        long: list[tuple[str, int]] = []
        nq_tok = len(q.colbert[i]) if "colbert" in names else 1
        for f, pts in zip(names, self._batch(reqs), strict=True):
            for p in pts:
                out[f][pos[p.payload["doc_id"]]] = p.score / nq_tok if f == "colbert" else p.score
                if f == "colbert" and (p.payload.get("n_chunks") or 0) > 1:
                    long.append((p.payload["doc_id"], int(p.payload["n_chunks"])))
        if long:
            exact = colbert_scores(q.colbert[i], self._matrices(long))
            for (d, _), s in zip(long, exact, strict=True):
                out["colbert"][pos[d]] = s
        return out

    def _matrices(self, docs: list[tuple[str, int]]) -> list[np.ndarray]:
        """Whole ColBERT matrices of long documents ``(id, n_chunks)``: the point's rows, then its chunks'."""
        heads = self._call("retrieve", self.client.retrieve, self.collection, [point_id(d) for d, _ in docs],
                           with_vectors=["colbert"], with_payload=["doc_id"])
        head = {p.payload["doc_id"]: p.vector["colbert"] for p in heads}
        cids = [chunk_point_id(d, j) for d, n in docs for j in range(1, n)]
        rest = {}
        for s in range(0, len(cids), 256):
            for p in self._call("retrieve", self.client.retrieve, self.chunks, cids[s : s + 256],
                                with_vectors=["colbert"], with_payload=["doc_id", "chunk"]):
                rest[(p.payload["doc_id"], int(p.payload["chunk"]))] = p.vector["colbert"]
        out = []
        for d, n in docs:
            parts = [head.get(d, [])] + [rest.get((d, j), []) for j in range(1, n)]
            if any(len(x) == 0 for x in parts):
                raise BackendError(f"{self.where}: document {d!r} lacks some of its {n} ColBERT chunks "
                                   "(an interrupted add? add it again)")
            out.append(np.concatenate([np.asarray(x, np.float32) for x in parts]))
        return out

    def _has_chunks(self) -> bool:
        # the metadata point lives there too
        return self.has_colbert and int(self._call("count", self.client.count, self.chunks, exact=True).count) > 1

    def _engine(self, q: M3Output, k: int, mode: str, w: tuple[float, float, float], dd: int, sd: int,
                rd: int) -> list[list[Hit]]:
        m = self.m
        chunked = mode != "dense+sparse" and self._has_chunks()
        reqs, wts_per_q = [], []
        for i in range(len(q)):
            dense, sparse, col = (self._query_vec(f, q, i) for f in ("dense", "sparse", "colbert"))
            if mode == "multivec":
                lim = max(rd, k) if chunked else k
                wts_per_q.append({"colbert": 1.0})
                if col is None:  # an empty query matrix scores 0 everywhere: keep the dense order
                    reqs.append(m.QueryRequest(query=dense, using="dense", limit=lim, with_payload=["doc_id"]))
                    wts_per_q[-1] = {}
                    continue
                reqs.append(m.QueryRequest(prefetch=m.Prefetch(query=dense, using="dense", limit=max(rd, k)),
                                           query=col, using="colbert", limit=lim,
                                           with_payload=["doc_id", "n_chunks"]))
                continue
            cand = [m.Prefetch(query=dense, using="dense", limit=dd)]
            if sparse is not None and sd:
                cand.append(m.Prefetch(query=sparse, using="sparse", limit=sd))
            wts = {"dense": w[0], "sparse": w[1]}
            if mode == "all":
                wts["colbert"] = w[2]
            total = sum(wts.values())
            if total == 0:
                raise ValueError("weights sum to zero")
            vecs = {"dense": dense, "sparse": sparse, "colbert": col}
            fields = [f for f in wts if vecs[f] is not None]  # an empty query side contributes 0
            prefetch = [m.Prefetch(prefetch=cand, query=vecs[f], using=f, limit=dd + sd) for f in fields]
            scale = {"dense": 1.0, "sparse": 1.0, "colbert": 1.0 / len(col) if col is not None else 1.0}
            terms = [m.MultExpression(mult=[wts[f] / total * scale[f], f"$score[{j}]"]) for j, f in enumerate(fields)]
            formula = m.FormulaQuery(formula=m.SumExpression(sum=terms),
                                     defaults={f"$score[{j}]": 0.0 for j in range(len(fields))})
            lim = dd + sd if chunked else k
            reqs.append(m.QueryRequest(prefetch=prefetch, query=formula, limit=lim,
                                       with_payload=["doc_id", "n_chunks"]))
            wts_per_q.append({f: wts[f] / total for f in wts})
        out = []
        for i, pts in enumerate(self._batch(reqs)):
            ids = [p.payload["doc_id"] for p in pts]
            scores = np.array([p.score for p in pts], np.float64)
            if mode == "multivec" and wts_per_q[i]:  # MAX_SIM sums over query vectors: M3 averages
                scores /= len(q.colbert[i])
            wc = wts_per_q[i].get("colbert", 0.0)
            long = [(p.payload["doc_id"], int(p.payload.get("n_chunks") or 0), j) for j, p in enumerate(pts)
                    if (p.payload.get("n_chunks") or 0) > 1]
            if chunked and long and wc and q.colbert is not None and len(q.colbert[i]):
                # the engine scored the first chunk only: swap in the exact MaxSim of the whole matrix
                approx = self._exact_first_chunk(q, i, [d for d, _, _ in long])
                exact = colbert_scores(q.colbert[i], self._matrices([(d, n) for d, n, _ in long]))
                for (_, _, j), a, e in zip(long, approx, exact, strict=True):
                    scores[j] += wc * (float(e) - float(a))
            if mode == "multivec" and not wts_per_q[i]:  # empty query matrix: ColBERT scores are all 0
                scores = np.zeros(len(ids))
            out.append(rank(ids, scores, {"colbert" if mode == "multivec" else mode: scores}, k))
        return out

    def _exact_first_chunk(self, q: M3Output, i: int, ids: list[str]) -> np.ndarray:
        """The engine's MAX_SIM of query ``i`` against the first chunk of each of ``ids``."""
        m = self.m
        flt = m.Filter(must=[m.HasIdCondition(has_id=[point_id(d) for d in ids])])
        pts = self._batch([m.QueryRequest(query=self._query_vec("colbert", q, i), using="colbert", filter=flt,
                                          limit=len(ids), with_payload=["doc_id"])])[0]
        got = {p.payload["doc_id"]: p.score for p in pts}
        return np.array([got.get(d, 0.0) for d in ids], np.float64) / len(q.colbert[i])

    def _payloads(self, ids: list[str]) -> dict[str, tuple[str | None, dict | None]]:
        out = {}
        for s in range(0, len(ids), 1000):
            for p in self._call("retrieve", self.client.retrieve, self.collection,
                                [point_id(d) for d in ids[s : s + 1000]], with_payload=["doc_id", "text", "metadata"]):
                out[p.payload["doc_id"]] = (p.payload.get("text"), p.payload.get("metadata"))
        return out

    def __repr__(self) -> str:
        return f"QdrantStore({self.where}, colbert={self.has_colbert}, max_rows={self.max_rows})"


def _floats(v: Any) -> int:
    if isinstance(v, list):
        return sum(len(x) for x in v) if v and isinstance(v[0], list) else len(v)
    return len(getattr(v, "indices", ())) * 2


__all__ = ["QDRANT_MAX_MULTIVECTOR_FLOATS", "QdrantStore", "union"]
