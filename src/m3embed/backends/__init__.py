"""Vector-database backends for the three M3 representations, behind one interface.

::

    from m3embed.backends import open_store, ingest

    store = open_store("milvus", uri="m3.db", collection="docs", model=model)    # Milvus Lite file
    store = open_store("milvus", uri="http://host:19530", token="user:pw", collection="docs", model=model)
    store = open_store("qdrant", path="qdrant-data", collection="docs", model=model)  # local mode
    store = open_store("qdrant", url="http://host:6333", api_key="…", collection="docs", model=model)
    store = open_store("local", path="my-index", model=model)                      # M3Index
    ingest(store, "corpus.jsonl", model)                                           # encode + upsert
    hits = store.search(["what is bge m3?"], k=10, mode="all")                     # SearchHit lists

Every store has ``add`` (upsert by id), ``delete``, ``count``, ``existing``, ``search`` (the modes of
``M3Index.search``) and ``close``. The database clients are imported only when a backend is used
(``pip install 'm3embed[milvus]'`` / ``'m3embed[qdrant]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..output import LexicalWeights, M3Output
from .base import BackendError, BackendUnavailableError, ModelMismatchError, SearchHit, VectorStore, point_id

if TYPE_CHECKING:
    from ..index.core import M3Index
    from ..model import M3Model

BACKENDS = ("local", "milvus", "qdrant")

__all__ = ["BACKENDS", "BackendError", "BackendUnavailableError", "ModelMismatchError", "SearchHit", "VectorStore",
           "from_index", "ingest", "open_store", "point_id"]


def open_store(backend: str, /, *, model: M3Model | Mapping[str, Any] | None = None, **options: Any) -> VectorStore:
    """Open (or create) a collection of ``backend`` ("local", "milvus", "qdrant").

    ``model``: the ``M3Model`` (queries given as text are encoded with it; its fingerprint is stored
    on creation and checked on re-opening) or a fingerprint dict (``hidden_size``, ``colbert_dim``,
    ``vocab_size``) when only pre-encoded vectors are used. Options per backend:

    * local — ``path`` and ``M3Index.create`` options (``multivec``, ``dense``, …);
    * milvus — ``uri`` (a ``.db`` file: Milvus Lite; ``http://host:19530``: a server), ``token``,
      ``collection``, ``timeout``, … (see :class:`m3embed.backends.milvus.MilvusStore`);
    * qdrant — ``path`` or ``location=":memory:"`` (local mode) or ``url`` + ``api_key`` (a server),
      ``collection``, ``timeout``, ``max_multivector_floats``, … (see :class:`m3embed.backends.qdrant.QdrantStore`).
    """
    name = backend.lower() if isinstance(backend, str) else backend
    if name in ("local", "m3index"):
        from .local import LocalStore

        path = options.pop("path", None)
        if path is None:
            raise ValueError("open_store('local') needs path=… (an M3Index directory)")
        return LocalStore.open(path, model, **options)
    if name == "milvus":
        from .milvus import MilvusStore

        return MilvusStore(model=model, **options)
    if name == "qdrant":
        from .qdrant import QdrantStore

        return QdrantStore(model=model, **options)
    raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")


def ingest(store: VectorStore, corpus: str | Path | Iterable[Mapping[str, Any]], model: M3Model, *,
           batch_size: int = 32, max_length: int = 512, chunk_size: int = 256, skip_existing: bool = False,
           store_text: bool = True, progress: Callable[[int], None] | None = None) -> int:
    """Encode ``corpus`` (``M3Index.build``'s records or a ``.jsonl`` file) and upsert it into ``store``,
    ``chunk_size`` documents per ``add``. Returns the number of documents written.

    Upserts make a re-run after an interruption safe (no duplicates); ``skip_existing=True`` also skips
    re-encoding the documents a previous run already wrote.
    """
    from ..index.docs import read_corpus

    colbert = bool(getattr(store, "has_colbert", True))
    written = 0
    chunk: list[tuple[str, str, dict | None]] = []

    def flush() -> int:
        recs = chunk
        if skip_existing:
            have = store.existing([r[0] for r in recs])
            recs = [r for r in recs if r[0] not in have]
        if recs:
            texts = [r[1] for r in recs]
            enc = model.encode(texts, batch_size=batch_size, max_length=max_length, return_dense=True,
                               return_sparse=True, return_colbert=colbert)
            store.add([r[0] for r in recs], enc, texts=texts if store_text else None, metadata=[r[2] for r in recs])
        if progress is not None:
            progress(len(chunk))
        return len(recs)

    for rec in read_corpus(corpus):
        chunk.append(rec)
        if len(chunk) >= chunk_size:
            written += flush()
            chunk = []
    if chunk:
        written += flush()
    return written


def from_index(index: M3Index, store: VectorStore, *, chunk_size: int = 1024, store_text: bool = True) -> int:
    """Copy the live documents of an ``M3Index`` (already encoded: no model run) into ``store``.

    ColBERT vectors are copied as the index decodes them (fp16/int8/residual codecs: rounded).
    Returns the number of documents copied.
    """
    live = index.live_mask()
    rows = np.arange(index.n_rows) if live is None else np.flatnonzero(live)
    fwd = index.sparse.forward
    written = 0
    for s in range(0, len(rows), chunk_size):
        part = rows[s : s + chunk_size]
        csr = fwd[part]
        lex = LexicalWeights(csr.indptr.astype(np.int64), csr.indices.astype(np.int64),
                             csr.data.astype(np.float32), index.fingerprint["vocab_size"])
        col = index.multivec.get(part) if index.multivec is not None else None
        enc = M3Output(dense=np.asarray(index.dense.vectors[part], dtype=np.float32), lexical=lex, colbert=col)
        docs = [index.docs.get(int(r)) for r in part]
        store.add([index.docs.ids[int(r)] for r in part], enc,
                  texts=[d[0] for d in docs] if store_text else None, metadata=[d[1] for d in docs])
        written += len(part)
    return written
