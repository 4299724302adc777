"""Milvus backend (``pymilvus``; Milvus Lite for a ``.db`` file URI, any Milvus server otherwise).

Collection ``<collection>``: ``pid`` (VARCHAR primary key: ``uuid5`` of the document id, see
:func:`~m3embed.backends.base.point_id`), ``doc_id`` (the original id), ``dense`` (FLOAT_VECTOR,
inner product, FLAT index by default), ``sparse`` (SPARSE_FLOAT_VECTOR keyed by token id,
SPARSE_INVERTED_INDEX, inner product), ``n_tokens``, ``text`` and ``metadata`` (JSON). The model
fingerprint and layout options are the collection property ``m3embed.meta`` (JSON; also the
description, which Milvus Lite does not keep). A document without lexical weights gets one weight
of 1e-38 at token id ``vocab_size`` (outside the vocabulary, so no query ever matches it): Milvus
refuses empty sparse vectors.

ColBERT vectors: Milvus Lite 3.2.2 has no multi-vector field (it drops an Array-of-Structs field
from the schema without a word and refuses an ``EMB_LIST`` / ``MAX_SIM`` index on it) and no
FLOAT16_VECTOR, so the token vectors live in a side collection ``<collection>__colbert_pages``: each
entity is a *page* of ``colbert_page_rows`` (32) consecutive token vectors of one document, flattened
into one FLOAT_VECTOR of ``32 × dim`` floats (at most 32,768, Milvus's largest dimension; the last
page zero-padded; ``n_tokens`` says how many rows are real), keyed ``<pid>:<page>``, with ``parent``
= the document's ``pid``. Re-ranking fetches the candidates' pages (a filtered query) and scores them
client-side with ``m3embed.scoring.maxsim_packed``. One entity per token vector (the layout of
Milvus's ColBERT examples) took 6.8 s to fetch 40 documents' 5,800 vectors from Milvus Lite, pages
3.6 s: the per-entity cost dominates. Works on every Milvus ≥ 2.4.

Search: ``dense+sparse`` in the engine is Milvus's ``hybrid_search`` with a ``WeightedRanker``
(``norm_score=False``) over the dense and sparse lists, divided by ``w_d + w_s``: a document missing
from one list counts 0 there (the paper's fusion; ``M3Index`` and ``fusion="client"`` use the exact
score — identical whenever the lists cover every document with a non-zero score). Every other mode,
and ``fusion="client"``, fuses client-side over the engine's candidate lists and exact (filtered) scores.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..output import M3Output
from ..scoring import maxsim_grouped
from .base import (
    BackendError,
    BackendUnavailableError,
    Hit,
    StoreBase,
    check_encoded,
    check_fingerprint,
    check_ids,
    check_side,
    colbert_scores,
    metadata_blob,
    missing_extra,
    parse_metadata_blob,
    point_id,
    rank,
    resolve_fingerprint,
)

if TYPE_CHECKING:
    from ..model import M3Model

PAGES_SUFFIX = "__colbert_pages"
MAX_DIM = 32768  # Milvus's largest vector dimension
FETCH_DOCS = 512  # documents whose token vectors are fetched at once when re-ranking a batch of queries
SIM_BUDGET = 1 << 25  # query-vector × token-vector similarities held at once (128 MB of float32)
FETCH_PAGES = 256  # ColBERT pages per query call (≈ 32 MB of float32 at 1024 dims): each call stays short
META_PROPERTY = "m3embed.meta"
EMPTY_SPARSE_WEIGHT = 1e-38  # Milvus refuses empty sparse vectors: a document without weights gets this one
MAX_VARCHAR = 65535
MAX_TOPK = 16384  # Milvus's limit on limit (+ offset) of one search or query
COLBERT_DTYPES = ("float16", "float32")


def _import():
    try:
        import pymilvus
    except ImportError as e:
        raise missing_extra("pymilvus", "milvus", e) from None
    return pymilvus


class MilvusStore(StoreBase):
    """A Milvus collection of M3 vectors (``open_store("milvus", …)``).

    ``uri``: a local file ending in ``.db`` (Milvus Lite, embedded) or a server URI
    (``http://host:19530``, Zilliz Cloud endpoint) with ``token`` (``"user:password"`` or an API key)
    and ``db_name``. ``timeout`` (seconds) bounds connecting and every request; an unreachable
    server raises :class:`BackendUnavailableError`. Creation options (ignored when the collection
    exists): ``colbert`` (store token vectors), ``colbert_dtype`` ("float32", or "float16": half the
    bytes, the values ``M3Index``'s default fp16 codec keeps — Milvus servers only), ``dense_index``
    (an index type, e.g. "HNSW" on a server, with ``dense_index_params``), ``id_max_bytes``, ``store_text``.
    """

    backend = "milvus"
    engine_modes = frozenset({"dense+sparse"})

    def __init__(self, *, uri: str = "m3embed.db", collection: str = "m3embed",
                 model: M3Model | Mapping[str, Any] | None = None, token: str = "", db_name: str = "",
                 timeout: float = 10.0, client: Any = None, create: bool = True, check_model: bool = True,
                 colbert: bool = True, colbert_dtype: str = "float32", dense_index: str = "FLAT",
                 dense_index_params: Mapping[str, Any] | None = None, id_max_bytes: int = 1024,
                 store_text: bool = True, colbert_page_rows: int = 32, insert_rows: int = 1024,
                 **client_options: Any) -> None:
        pm = _import()
        self.pm = pm
        self.collection = collection
        self.pages = collection + PAGES_SUFFIX
        self.timeout = float(timeout)
        self.insert_rows = int(insert_rows)
        self.model = None if model is None or isinstance(model, Mapping) else model
        self._target = str(uri)
        self.where = f"milvus collection {collection!r} ({uri})"
        self.client = client if client is not None else self._connect(uri, token, db_name, client_options)
        exists = self._call("has_collection", self.client.has_collection, collection)
        if exists:
            desc = self._call("describe_collection", self.client.describe_collection, collection)
            meta = parse_metadata_blob((desc.get("properties") or {}).get(META_PROPERTY) or desc.get("description"),
                                       self.where)
            self.fingerprint = meta["model"]
            if model is not None:
                check_fingerprint(self.fingerprint, resolve_fingerprint(model), strict=check_model, where=self.where)
            self.has_colbert = bool(meta["colbert"])
            self.colbert_dtype = meta["colbert_dtype"]
            self.id_max_bytes = int(meta["id_max_bytes"])
            self.store_text = bool(meta["store_text"])
            self.page_rows = int(meta.get("page_rows", 1))
            for name in (collection, self.pages) if self.has_colbert else (collection,):
                self._call("load_collection", self.client.load_collection, name)
        else:
            if not create:
                raise BackendError(f"{self.where}: no such collection (pass create=True and model=… to create it)")
            if model is None:
                raise ValueError(f"{self.where}: does not exist; pass model=… (an M3Model or a fingerprint dict) "
                                 "to create it")
            if colbert_dtype not in COLBERT_DTYPES:
                raise ValueError(f"colbert_dtype {colbert_dtype!r}: expected one of {COLBERT_DTYPES}")
            if not 1 <= id_max_bytes <= MAX_VARCHAR:
                raise ValueError(f"id_max_bytes must be in [1, {MAX_VARCHAR}], got {id_max_bytes}")
            self.fingerprint = resolve_fingerprint(model)
            self.has_colbert = bool(colbert)
            self.colbert_dtype = colbert_dtype
            self.id_max_bytes = int(id_max_bytes)
            self.store_text = bool(store_text)
            top = MAX_DIM // self.fingerprint["colbert_dim"]
            if colbert_page_rows < 1:
                raise ValueError(f"colbert_page_rows must be positive, got {colbert_page_rows}")
            self.page_rows = min(int(colbert_page_rows), top)
            self._create(dense_index, dict(dense_index_params or {}))

    # ------------------------------------------------------------------ connection and collections
    def _connect(self, uri: str, token: str, db_name: str, options: dict[str, Any]) -> Any:
        if "://" not in uri:  # a Milvus Lite file: its folder must exist
            Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            return self.pm.MilvusClient(uri=uri, token=token, db_name=db_name, timeout=self.timeout, **options)
        except Exception as e:
            raise self._unavailable(e) from None

    def _unavailable(self, e: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(f"milvus at {self._target}: cannot reach the server "
                                       f"({type(e).__name__}: {str(e)[:300]})")

    def _call(self, what: str, fn, *args: Any, **kw: Any) -> Any:
        kw.setdefault("timeout", self.timeout)
        try:
            return fn(*args, **kw)
        except (ValueError, TypeError):
            raise
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            if "DEADLINE_EXCEEDED" in text:
                raise BackendError(f"{self.where}: {what} took longer than timeout={self.timeout:g} s (a slow or "
                                   "overloaded server; pass a larger timeout=… to open_store)") from None
            if any(s in text for s in ("UNAVAILABLE", "Connect", "connect", "Timeout", "timed out")):
                raise self._unavailable(e) from None
            raise BackendError(f"{self.where}: {what} failed ({text[:300]})") from None

    def _create(self, dense_index: str, dense_params: dict[str, Any]) -> None:
        pm, dt, fp = self.pm, self.pm.DataType, self.fingerprint
        blob = metadata_blob(fp, colbert=self.has_colbert, colbert_dtype=self.colbert_dtype,
                             id_max_bytes=self.id_max_bytes, store_text=self.store_text, colbert_layout="pages",
                             page_rows=self.page_rows)
        schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=blob)
        schema.add_field("pid", dt.VARCHAR, is_primary=True, max_length=36)
        schema.add_field("doc_id", dt.VARCHAR, max_length=self.id_max_bytes)
        schema.add_field("dense", dt.FLOAT_VECTOR, dim=fp["hidden_size"])
        schema.add_field("sparse", dt.SPARSE_FLOAT_VECTOR)
        schema.add_field("n_tokens", dt.INT64)
        schema.add_field("text", dt.VARCHAR, max_length=MAX_VARCHAR, nullable=True)
        schema.add_field("metadata", dt.JSON, nullable=True)
        idx = self.client.prepare_index_params()
        idx.add_index(field_name="dense", index_type=dense_index, metric_type="IP", params=dense_params)
        idx.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        if self.has_colbert:  # the side collection first: a main collection is never left without it
            ts = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                               description=f"m3embed ColBERT token vectors of {self.collection}")
            ts.add_field("kid", dt.VARCHAR, is_primary=True, max_length=48)
            ts.add_field("parent", dt.VARCHAR, max_length=36)
            ts.add_field("page", dt.INT64)
            vtype = dt.FLOAT16_VECTOR if self.colbert_dtype == "float16" else dt.FLOAT_VECTOR
            ts.add_field("vec", vtype, dim=self.page_rows * fp["colbert_dim"])
            tidx = self.client.prepare_index_params()
            tidx.add_index(field_name="vec", index_type="FLAT", metric_type="IP")
            tidx.add_index(field_name="parent", index_type="INVERTED")
            if not self._call("has_collection", self.client.has_collection, self.pages):
                self._call("create_collection", self.client.create_collection, self.pages, schema=ts,
                           index_params=tidx, consistency_level="Strong")
        self._call("create_collection", self.client.create_collection, self.collection, schema=schema,
                   index_params=idx, consistency_level="Strong", properties={META_PROPERTY: blob})

    # ------------------------------------------------------------------ writing
    def add(self, ids: Sequence[str], encoded: M3Output, texts: Sequence[str | None] | None = None,
            metadata: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        """Upsert documents by id (their token vectors are replaced in the side collection first)."""
        ids = check_ids(ids, max_bytes=self.id_max_bytes)
        n = len(ids)
        check_encoded(encoded, n, self.fingerprint, colbert=self.has_colbert)
        texts = check_side("texts", texts, n)
        metadata = check_side("metadata", metadata, n)
        if texts is not None and self.store_text:
            for i, t in enumerate(texts):
                if t is not None and len(t.encode("utf-8", "surrogatepass")) > MAX_VARCHAR:
                    raise ValueError(f"text at index {i} (id {ids[i]!r}) is over {MAX_VARCHAR} bytes, Milvus's VARCHAR "
                                     "limit: create the collection with store_text=False (or keep texts elsewhere)")
        if n == 0:
            return
        pids = [point_id(d) for d in ids]
        rows = []
        for i, d in enumerate(ids):
            tok, w = encoded.lexical.row(i)
            sparse = {int(t): float(x) for t, x in zip(tok.tolist(), w.tolist(), strict=True) if x != 0}
            rows.append({"pid": pids[i], "doc_id": d, "dense": encoded.dense[i].astype(np.float32),
                         "sparse": sparse or {int(self.fingerprint["vocab_size"]): EMPTY_SPARSE_WEIGHT},
                         "n_tokens": len(encoded.colbert[i]) if self.has_colbert else 0,
                         "text": texts[i] if texts is not None and self.store_text else None,
                         "metadata": dict(metadata[i]) if metadata is not None and metadata[i] is not None else None})
        if self.has_colbert:
            # replace the token vectors first, the document last: once the document is visible its pages are
            # there (an interrupted add is repaired by running it again)
            self._delete_pages(pids)
            vt = np.float16 if self.colbert_dtype == "float16" else np.float32
            pr, dim = self.page_rows, self.fingerprint["colbert_dim"]
            batch: list[dict] = []
            for i, pid in enumerate(pids):
                mat = encoded.colbert[i]
                for j in range(-(-len(mat) // pr)):
                    flat = np.zeros(pr * dim, dtype=vt)
                    part = mat[j * pr : (j + 1) * pr]
                    flat[: part.size] = part.reshape(-1)
                    batch.append({"kid": f"{pid}:{j}", "parent": pid, "page": j, "vec": flat})
                    if len(batch) * pr >= self.insert_rows * 32:  # ~4 MB of float32 per insert call
                        self._call("insert", self.client.insert, self.pages, data=batch)
                        batch = []
            if batch:
                self._call("insert", self.client.insert, self.pages, data=batch)
        for s in range(0, len(rows), self.insert_rows):
            self._call("upsert", self.client.upsert, self.collection, data=rows[s : s + self.insert_rows])

    def _delete_pages(self, pids: list[str]) -> None:
        for s in range(0, len(pids), 1000):
            self._call("delete", self.client.delete, self.pages, filter=f"parent in {json.dumps(pids[s : s + 1000])}")

    def delete(self, ids: Sequence[str]) -> int:
        ids = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        if not ids:
            return 0
        present = self.existing(ids)
        pids = [point_id(d) for d in ids]
        self._call("delete", self.client.delete, self.collection, ids=pids)
        if self.has_colbert:
            self._delete_pages(pids)
        return len(present)

    def count(self) -> int:
        res = self._call("count", self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def existing(self, ids: Sequence[str]) -> set[str]:
        ids = list(ids)
        out: set[str] = set()
        for s in range(0, len(ids), 1000):
            got = self._call("get", self.client.get, self.collection, ids=[point_id(d) for d in ids[s : s + 1000]],
                             output_fields=["doc_id"])
            out.update(r["doc_id"] for r in got)
        return out

    def flush(self) -> None:
        """Seal the growing segments (a server persists them; reads never need it)."""
        for name in (self.collection, self.pages) if self.has_colbert else (self.collection,):
            self._call("flush", self.client.flush, name)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a client whose server is gone must not raise
            self.client.close()

    # ------------------------------------------------------------------ search primitives
    @staticmethod
    def _sparse(q: M3Output, i: int) -> dict[int, float] | None:
        tok, w = q.lexical.row(i)
        return {int(t): float(x) for t, x in zip(tok.tolist(), w.tolist(), strict=True)} or None

    def _search(self, field: str, data: list[Any], limit: int, filt: str = "") -> list[list[dict]]:
        if not data:
            return []
        return self._call("search", self.client.search, self.collection, data=data, anns_field=field, filter=filt,
                          limit=min(limit, MAX_TOPK), output_fields=["doc_id"], search_params={"metric_type": "IP"})

    def _topk(self, field: str, q: M3Output, depth: int) -> list[tuple[list[str], np.ndarray]]:
        if field == "dense":
            where, data = list(range(len(q))), [q.dense[i].astype(np.float32) for i in range(len(q))]
        else:
            vecs = [self._sparse(q, i) for i in range(len(q))]
            where = [i for i, v in enumerate(vecs) if v]
            data = [vecs[i] for i in where]
        out: list[tuple[list[str], np.ndarray]] = [([], np.zeros(0, np.float32))] * len(q)
        for i, hits in zip(where, self._search(field, data, depth), strict=True):
            if field == "sparse":
                hits = [h for h in hits if h["distance"] > 0]
            out[i] = ([h["entity"]["doc_id"] for h in hits], np.array([h["distance"] for h in hits], np.float32))
        return out

    def _exact(self, q: M3Output, i: int, ids: list[str], fields: Sequence[str]) -> dict[str, np.ndarray]:
        pos = {d: j for j, d in enumerate(ids)}
        out = {f: np.zeros(len(ids), np.float32) for f in fields}
        if not ids:
            return out
        for s in range(0, len(ids), MAX_TOPK):
            part = ids[s : s + MAX_TOPK]
            filt = f"pid in {json.dumps([point_id(d) for d in part])}"
            for f in fields:
                if f == "colbert":
                    continue
                vec = q.dense[i].astype(np.float32) if f == "dense" else self._sparse(q, i)
                if vec is None:  # an empty query side scores 0 everywhere
                    continue
                for h in self._search(f, [vec], len(part), filt)[0]:
                    out[f][pos[h["entity"]["doc_id"]]] = h["distance"]
        if "colbert" in fields and q.colbert is not None and len(q.colbert[i]):
            out["colbert"] = colbert_scores(q.colbert[i], self._matrices(ids))
        return out

    def _colbert_many(self, q: M3Output, requests: list[tuple[int, list[str]]]) -> list[np.ndarray]:
        """Exact MaxSim per request; the pages of a group of requests' candidates are fetched once
        (queries of one batch share most candidates), ``FETCH_DOCS`` documents at most per group."""
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(requests)
        j = 0
        while j < len(requests):
            group, docs = [], {}
            while j < len(requests) and (not group or len(docs.keys() | set(requests[j][1])) <= FETCH_DOCS):
                group.append(j)
                docs.update(dict.fromkeys(requests[j][1]))
                j += 1
            union = list(docs)
            mats = self._matrices(union)
            pos = {d: c for c, d in enumerate(union)}
            data = np.concatenate(mats) if mats else np.zeros((0, self.fingerprint["colbert_dim"]), np.float32)
            offsets = np.concatenate([[0], np.cumsum([len(x) for x in mats])]).astype(np.int64)
            # one [Σ n_q, T] matmul per sub-group of queries (maxsim_grouped), bounded in memory
            todo = [g for g in group if q.colbert is not None and len(q.colbert[requests[g][0]]) and requests[g][1]]
            for g in group:
                out[g] = np.zeros(len(requests[g][1]), np.float32)
            step = max(1, SIM_BUDGET // max(1, len(data) * 32))
            for a in range(0, len(todo), step):
                sub = todo[a : a + step]
                full = maxsim_grouped([q.colbert[requests[g][0]] for g in sub], data, offsets)
                for g, sc in zip(sub, full, strict=True):
                    out[g] = sc[[pos[d] for d in requests[g][1]]]
        return out

    def _matrices(self, ids: list[str]) -> list[np.ndarray]:
        """ColBERT matrices of ``ids`` (float32, rows in order), reassembled from their pages."""
        pids = [point_id(d) for d in ids]
        dim, pr = self.fingerprint["colbert_dim"], self.page_rows
        counts: dict[str, int] = {}
        for s in range(0, len(pids), 1000):
            for r in self._call("get", self.client.get, self.collection, ids=pids[s : s + 1000],
                                output_fields=["n_tokens"]):
                counts[r["pid"]] = int(r["n_tokens"])
        flat = {p: np.zeros(-(-counts.get(p, 0) // pr) * pr * dim, np.float32) for p in pids}
        seen = dict.fromkeys(pids, 0)
        group: list[str] = []
        n_pages = 0
        for p in [*dict.fromkeys(pids), None]:  # groups of documents whose pages fit one query
            c = -(-counts.get(p, 0) // pr) if p is not None else 0
            if p is None or (group and n_pages + c > FETCH_PAGES):
                if group:
                    res = self._call("query", self.client.query, self.pages, filter=f"parent in {json.dumps(group)}",
                                     output_fields=["parent", "page", "vec"], limit=MAX_TOPK)
                    for r in res:
                        j = int(r["page"])
                        flat[r["parent"]][j * pr * dim : (j + 1) * pr * dim] = _vector(r["vec"], self.colbert_dtype)
                        seen[r["parent"]] += 1
                group, n_pages = [], 0
            if p is not None and c:
                group.append(p)
                n_pages += c
        bad = [d for d, p in zip(ids, pids, strict=True) if seen[p] != -(-counts.get(p, 0) // pr)]
        if bad:
            raise BackendError(f"{self.where}: document {bad[0]!r} lacks some of its ColBERT vectors "
                               "(an interrupted add? add it again)")
        return [flat[p].reshape(-1, dim)[: counts.get(p, 0)] for p in pids]

    def _engine(self, q: M3Output, k: int, mode: str, w: tuple[float, float, float], dd: int, sd: int,
                rd: int) -> list[list[Hit]]:
        assert mode == "dense+sparse"
        pm = self.pm
        total = w[0] + w[1]
        if total == 0:
            raise ValueError("weights sum to zero")
        sparse = [self._sparse(q, i) for i in range(len(q))]
        hybrid = [i for i in range(len(q)) if sparse[i] and dd and sd]
        out: list[list[Hit]] = [[] for _ in range(len(q))]
        if hybrid:
            reqs = [pm.AnnSearchRequest(data=[q.dense[i].astype(np.float32) for i in hybrid], anns_field="dense",
                                        param={"metric_type": "IP"}, limit=min(dd, MAX_TOPK)),
                    pm.AnnSearchRequest(data=[sparse[i] for i in hybrid], anns_field="sparse",
                                        param={"metric_type": "IP"}, limit=min(sd, MAX_TOPK))]
            res = self._call("hybrid_search", self.client.hybrid_search, self.collection, reqs=reqs,
                             ranker=pm.WeightedRanker(w[0], w[1], norm_score=False), limit=k, output_fields=["doc_id"])
            for i, hits in zip(hybrid, res, strict=True):
                ids = [h["entity"]["doc_id"] for h in hits]
                scores = np.array([h["distance"] for h in hits], np.float64) / total
                out[i] = rank(ids, scores, {"dense+sparse": scores}, k)
        rest = [i for i in range(len(q)) if i not in set(hybrid)]
        if rest:  # an empty sparse query (or a zero depth): the client path, which handles it
            sub = _take(q, rest)
            for i, hits in zip(rest, self._client(sub, k, mode, w, dd, sd, rd), strict=True):
                out[i] = hits
        return out

    def _payloads(self, ids: list[str]) -> dict[str, tuple[str | None, dict | None]]:
        out = {}
        for s in range(0, len(ids), 1000):
            for r in self._call("get", self.client.get, self.collection, ids=[point_id(d) for d in ids[s : s + 1000]],
                                output_fields=["doc_id", "text", "metadata"]):
                out[r["doc_id"]] = (r.get("text"), r.get("metadata"))
        return out

    def __repr__(self) -> str:
        return f"MilvusStore({self.where}, colbert={self.has_colbert} ({self.colbert_dtype}))"


def _vector(v: Any, dtype: str) -> np.ndarray:
    """A vector as pymilvus returns it (list of floats, or bytes for FLOAT16_VECTOR) → float32."""
    if isinstance(v, bytes | bytearray):
        return np.frombuffer(v, dtype=np.float16 if dtype == "float16" else np.float32).astype(np.float32)
    if isinstance(v, list) and v and isinstance(v[0], bytes | bytearray):
        return _vector(v[0], dtype)
    return np.asarray(v, dtype=np.float32)


def _take(q: M3Output, rows: list[int]) -> M3Output:
    from .base import take_rows

    return take_rows(q, rows)
