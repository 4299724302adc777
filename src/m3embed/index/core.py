"""M3Index: an embedded on-disk index of a corpus's dense, lexical and ColBERT representations.

::

    idx = M3Index.build(corpus, model, "my-index")          # encode + index + save
    idx = M3Index.open("my-index")                          # memory-mapped, read-only
    hits = idx.search(["what is bge m3?"], k=10, mode="all", model=model)

Rows are numbered in insertion order; ``delete`` marks rows dead (they are filtered in every
search) and ``compact`` rewrites the index without them. Writes go through
:mod:`.storage` (a new generation per ``save``, committed by an atomic manifest replace).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..output import ColbertVectors, M3Output
from . import dense as dense_mod
from . import multivec as mv_mod
from . import search as search_mod
from . import sparse as sparse_mod
from .dense import DenseIndex
from .docs import DocStore, count_records, read_corpus
from .multivec import MultiVecStore
from .sparse import SparseIndex
from .storage import (
    IndexCorruptError,
    Staging,
    WriterLock,
    check_files,
    load_array,
    read_manifest,
    remove_stale_staging,
)

if TYPE_CHECKING:
    from ..model import M3Model


class ModelMismatchError(ValueError):
    """Queries or documents from a model other than the one the index was built with."""


@dataclass
class SearchHit:
    """One result: document id, fused score, stored text / metadata and the per-mode scores."""

    id: str
    score: float
    text: str | None = None
    metadata: dict | None = None
    scores: dict[str, float] | None = None


# ---------------------------------------------------------------------------- model fingerprint
def model_fingerprint(model: M3Model) -> dict[str, Any]:
    """Name, dimensions and a cheap content hash (config + a strided sample of every tensor)."""
    import torch

    # where the files were loaded from and which transformers wrote the config are not the model: without
    # this, one checkpoint copied to another path (or node) would fingerprint as a different model
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(name.encode())
            h.update(flat[::step].to("cpu", torch.float32).numpy().tobytes())
    return {"name": str(getattr(model, "source", "") or ""), "hash": h.hexdigest()[:32],
            "hidden_size": int(model.hidden_size), "colbert_dim": int(model.colbert_dim),
            "vocab_size": int(model.tokenizer.vocab_size),
            "hybrid_weights": list(model.hybrid_weights)}


def _check_model(index_fp: dict[str, Any], fp: dict[str, Any], strict: bool) -> None:
    for key in ("hidden_size", "colbert_dim", "vocab_size"):
        if int(index_fp[key]) != int(fp[key]):
            raise ModelMismatchError(
                f"model {fp.get('name') or '?'} has {key}={fp[key]} but the index was built with model "
                f"{index_fp.get('name') or '?'} ({key}={index_fp[key]})")
    if strict and index_fp.get("hash") and fp.get("hash") and index_fp["hash"] != fp["hash"]:
        raise ModelMismatchError(
            f"model {fp.get('name') or '?'} (hash {fp['hash']}) is not the model the index was built with "
            f"({index_fp.get('name') or '?'}, hash {index_fp['hash']}); pass check_model=False to search anyway")


def check_query_output(fp: Mapping[str, Any], q: M3Output, need: set[str]) -> None:
    """Pre-encoded queries must hold the representations in ``need`` with the dimensions of ``fp``."""
    if "dense" in need:
        if q.dense is None:
            raise ValueError("query encodings lack dense vectors (encode with return_dense=True)")
        if q.dense.ndim != 2 or q.dense.shape[1] != fp["hidden_size"]:
            raise ModelMismatchError(f"query dense vectors have shape {q.dense.shape}; the index holds "
                                     f"{fp['hidden_size']}-d vectors (model {fp.get('name') or '?'})")
    if "sparse" in need:
        if q.lexical is None:
            raise ValueError("query encodings lack lexical weights (encode with return_sparse=True)")
        if q.lexical.vocab_size != fp["vocab_size"]:
            raise ModelMismatchError(f"query lexical weights over {q.lexical.vocab_size} ids; the index uses "
                                     f"{fp['vocab_size']}")
    if "colbert" in need:
        if q.colbert is None:
            raise ValueError("query encodings lack ColBERT vectors (encode with return_colbert=True)")
        if q.colbert.data.ndim != 2 or q.colbert.data.shape[1] != fp["colbert_dim"]:
            raise ModelMismatchError(f"query ColBERT vectors have shape {q.colbert.data.shape}; the index "
                                     f"holds {fp['colbert_dim']}-d vectors")


def check_query_texts(queries: Sequence[object]) -> None:
    """Every query is a non-blank ``str`` (``TypeError`` / ``ValueError`` naming its index)."""
    for i, t in enumerate(queries):
        if not isinstance(t, str):
            raise TypeError(f"query {i} is {type(t).__name__}, expected str")
        if not t.strip():
            raise ValueError(f"query {i} is empty")


def encode_queries(queries: list[str], need: set[str], model: M3Model, *, batch_size: int = 32,
                   max_length: int = 512) -> M3Output:
    """Encode query texts with the representations in ``need`` (errors for non-str, empty or special-only queries)."""
    check_query_texts(queries)
    ids = model.tokenizer.tokenize(queries, max_length=max_length)
    special = set(model.tokenizer.special.unused)
    for i, toks in enumerate(ids):
        if all(t in special for t in toks):
            raise ValueError(f"query {i} ({queries[i][:40]!r}) has only special tokens; nothing to search for")
    return model.encode(queries, batch_size=batch_size, max_length=max_length, return_dense="dense" in need,
                        return_sparse="sparse" in need, return_colbert="colbert" in need)


# ---------------------------------------------------------------------------- options
def _split_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Normalise build options into ``{"dense": {...}, "sparse": {...}, "multivec": {...} | None, "store_text"}``."""
    opts = dict(opts)
    dense = dict(opts.pop("dense_options", {}) or {})
    d = opts.pop("dense", "flat")
    if isinstance(d, Mapping):
        dense.update(d)
    else:
        dense["kind"] = d
    for key in list(opts):
        if key in dense_mod.DEFAULTS and key != "kind":
            dense[key] = opts.pop(key)
    sparse = {"dtype": opts.pop("sparse_dtype", "float32")}
    mv = opts.pop("multivec", "fp16")
    mv_opts = dict(opts.pop("multivec_options", {}) or {})
    for key in ("nbits", "centroids", "kmeans_niter", "kmeans_sample", "seed"):
        if key in opts:
            mv_opts[key] = opts.pop(key)
    store_text = bool(opts.pop("store_text", True))
    if opts:
        raise ValueError(f"unknown index options {sorted(opts)}")
    multivec = None
    if mv not in (None, "none", False):
        multivec = mv_mod.check_options(dict(mv_opts, codec=mv))
    return {"dense": dense_mod.check_options(dense), "sparse": sparse_mod.check_options(sparse),
            "multivec": multivec, "store_text": store_text}


def _fit_codec_on_sample(idx: M3Index, model: M3Model, corpus: Any, total: int, n: int, bar: Any, *,
                         batch_size: int, max_length: int, mcls: bool) -> None:
    """Fit ``idx``'s residual codebook on ``n`` documents drawn at random from the whole corpus."""
    seed = idx.multivec.opts["seed"]
    picks = set(np.random.default_rng(seed).choice(total, min(n, total), replace=False).tolist())
    texts = [rec[1] for i, rec in enumerate(read_corpus(corpus)) if i in picks]
    task = bar.add_task("codebook sample", total=len(texts))
    enc = model.encode(texts, batch_size=batch_size, max_length=max_length, return_dense=False,
                       return_sparse=False, return_colbert=True, mcls=mcls, progress=lambda k: bar.advance(task, k))
    idx.fit_codec(enc)


# ---------------------------------------------------------------------------- the index
class M3Index:
    """Dense (faiss) + sparse (inverted index) + multi-vector (memory-mapped) index of one corpus."""

    def __init__(self, root: Path, fingerprint: dict[str, Any], options: dict[str, Any], *,
                 writable: bool, temporary: bool = False) -> None:
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.options = options
        self.writable = writable
        self.model: M3Model | None = None
        self.dense = DenseIndex(fingerprint["hidden_size"], options["dense"])
        self.sparse = SparseIndex(fingerprint["vocab_size"], options["sparse"])
        self.multivec = MultiVecStore(fingerprint["colbert_dim"], options["multivec"]) if options["multivec"] else None
        self.docs = DocStore()
        self._live = np.zeros(0, dtype=bool)
        self._live_dirty = True
        self._row_of: dict[str, int] = {}
        self._manifest: dict[str, Any] | None = None
        self._gen_dir: Path | None = None
        self._staging: Staging | None = None
        self._lock: WriterLock | None = None
        if writable:
            self._lock = WriterLock(self.root)
            remove_stale_staging(self.root)
        self._finalizer = weakref.finalize(self, _cleanup, self._lock, self.root if temporary else None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, path: str | Path | None, model: M3Model | Mapping[str, Any], **index_options: Any) -> M3Index:
        """A new, empty, writable index at ``path`` (an empty or new directory; ``None``: a temp dir).

        ``model``: the model (its fingerprint is recorded) or a fingerprint dict with ``hidden_size``,
        ``colbert_dim``, ``vocab_size`` (and optionally ``name``, ``hash``). Options: ``dense``
        ("flat" | "hnsw" | "ivf" or a dict), ``hnsw_m``, ``ef_search``, ``ef_construction``,
        ``ivf_nlist``, ``ivf_nprobe``, ``sparse_dtype`` ("float32" | "uint8" | "uint16"),
        ``multivec`` ("fp16" | "fp32" | "int8" | "residual" | "none"), ``nbits``, ``centroids``,
        ``kmeans_niter``, ``kmeans_sample``, ``seed``, ``store_text`` (default True).
        """
        options = _split_options(index_options)
        if isinstance(model, Mapping):
            fp = {"name": "", "hash": "", **dict(model)}
            for key in ("hidden_size", "colbert_dim", "vocab_size"):
                if not isinstance(fp.get(key), int) or fp[key] <= 0:
                    raise ValueError(f"model fingerprint needs a positive integer {key!r}")
            the_model = None
        else:
            fp = model_fingerprint(model)
            the_model = model
        temporary = path is None
        if temporary:
            root = Path(tempfile.mkdtemp(prefix="m3index-"))
        else:
            root = Path(path)
            if root.exists() and not root.is_dir():
                raise ValueError(f"{root}: exists and is not a directory")
            if root.is_dir() and any(p.name != "write.lock" for p in root.iterdir()):
                raise ValueError(f"{root}: directory is not empty; open an existing index with M3Index.open")
            root.mkdir(parents=True, exist_ok=True)
        idx = cls(root, fp, options, writable=True, temporary=temporary)
        idx.model = the_model
        return idx

    @classmethod
    def build(cls, corpus: str | Path | Iterable[Mapping[str, Any]] | None, model: M3Model,
              path: str | Path | None = None, *, batch_size: int = 32, max_length: int = 512,
              show_progress: bool = True, chunk_size: int = 2048, mcls: bool = False, engine: str = "local",
              from_encoded: str | Path | None = None, ray_options: Mapping[str, Any] | None = None,
              codec_sample: int = 1024, **index_options: Any) -> M3Index:
        """Encode ``corpus`` with ``model`` and index it (saved at ``path``; ``None``: a temp dir).

        ``corpus``: dicts ``{"id" | "_id", "text", optional "title", "metadata"}`` or a ``.jsonl``
        file of them (BEIR layout). Documents are encoded and added ``chunk_size`` at a time;
        ``mcls=True`` encodes them with a [CLS] every 256 tokens (long documents; local engine).
        ``engine="ray"``: encode ``.jsonl`` / ``.parquet`` shards (a file, directory or glob) on a Ray
        cluster first (``ray_options``: see :func:`m3embed.distributed.ray_encode.build_index`);
        ``from_encoded=DIR``: ingest the outputs of such a run without encoding (``corpus`` unused).
        ``codec_sample``: with the ``residual`` codec and a corpus longer than one chunk (a file or a
        sequence), the codebook is fitted on this many documents drawn at random from the whole
        corpus (encoded once more for it: ~1 % of the work at 100k) instead of on the first chunk,
        which misrepresents corpora sorted by source or language; 0 fits on the first chunk. With
        ``engine="ray"`` / ``from_encoded``, the documents are drawn from up to 16 parts spread over the run.
        """
        if engine not in ("local", "ray"):
            raise ValueError(f"engine {engine!r}: expected 'local' or 'ray'")
        mv_mod.check_codec_sample(codec_sample)
        if engine == "ray" or from_encoded is not None:
            if mcls:
                raise ValueError("mcls=True is supported by the local engine only")
            from ..distributed.ray_encode import build_index

            return build_index(cls, corpus, model, path, batch_size=batch_size, max_length=max_length,
                               show_progress=show_progress, from_encoded=from_encoded, ray_options=ray_options,
                               index_options=index_options, codec_sample=codec_sample)
        idx = cls.create(path, model, **index_options)
        total = count_records(corpus)
        want_colbert = idx.multivec is not None
        progress = _progress(show_progress, total)
        try:
            with progress as bar:
                if (want_colbert and idx.multivec.needs_fit and codec_sample > 0 and total is not None
                        and total > chunk_size and isinstance(corpus, str | Path | Sequence)):
                    _fit_codec_on_sample(idx, model, corpus, total, codec_sample, bar, batch_size=batch_size,
                                         max_length=max_length, mcls=mcls)
                task = bar.add_task("indexing", total=total)
                chunk: list[tuple[str, str, dict | None]] = []

                def flush() -> None:
                    ids = [c[0] for c in chunk]
                    texts = [c[1] for c in chunk]
                    idx._check_new_ids(ids)
                    enc = model.encode(texts, batch_size=batch_size, max_length=max_length, return_dense=True,
                                       return_sparse=True, return_colbert=want_colbert, mcls=mcls,
                                       progress=lambda n: bar.advance(task, n))
                    idx.add(ids, enc, texts=texts if idx.options["store_text"] else None,
                            metadata=[c[2] for c in chunk])
                    chunk.clear()

                for rec in read_corpus(corpus):
                    chunk.append(rec)
                    if len(chunk) >= chunk_size:
                        flush()
                if chunk:
                    flush()
            idx.save()
        except BaseException:
            idx.close(discard=True)
            raise
        return idx

    @classmethod
    def open(cls, path: str | Path, *, writable: bool = False, verify: bool = True,
             in_memory: bool = False) -> M3Index:
        """Open a saved index, memory-mapped. ``writable=True`` takes the writer lock.

        ``verify=True`` checks every file's sha256 against the manifest (sizes are always checked);
        problems raise :class:`IndexCorruptError` naming the file. ``in_memory=True`` reads every
        file into RAM instead of mapping it (slow disks: no page faults at query time).
        """
        root = Path(path)
        for attempt in range(3):  # a writer may replace the generation between reading the manifest and the files
            manifest = read_manifest(root)
            try:
                return cls._open_generation(root, manifest, writable=writable, verify=verify, in_memory=in_memory)
            except IndexCorruptError:
                if attempt == 2 or read_manifest(root)["generation"] == manifest["generation"]:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_generation(cls, root: Path, manifest: dict[str, Any], *, writable: bool, verify: bool,
                         in_memory: bool = False) -> M3Index:
        gen_dir = check_files(root, manifest, checksums=verify)
        try:
            options = manifest["options"]
            fp = manifest["model"]
            n = int(manifest["count"])
            idx = cls(root, fp, {"dense": options["dense"], "sparse": options["sparse"],
                                 "multivec": options.get("multivec"), "store_text": options.get("store_text", True)},
                      writable=writable)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, IndexCorruptError):
                raise
            raise IndexCorruptError(f"{root / 'manifest.json'}: bad options or model entry ({e})") from None
        try:
            idx._load(gen_dir, manifest, n, mmap=not in_memory)
        except IndexCorruptError:
            idx.close()
            raise
        except (ValueError, KeyError, IndexError) as e:
            idx.close()
            raise IndexCorruptError(f"{gen_dir}: files do not match the manifest ({e})") from None
        return idx

    def _load(self, gen_dir: Path, manifest: dict[str, Any], n: int, *, mmap: bool = True) -> None:
        def arr(name: str, gen_dir: Path = gen_dir) -> np.ndarray:
            return load_array(gen_dir, name, mmap=mmap)

        vectors = arr("dense.npy")
        if vectors.shape != (n, self.fingerprint["hidden_size"]) or vectors.dtype != np.float32:
            raise ValueError(f"dense.npy has shape {vectors.shape} {vectors.dtype}, the manifest says "
                             f"({n}, {self.fingerprint['hidden_size']}) float32")
        faiss_index = None
        if self.options["dense"]["kind"] != "flat":
            faiss_index = DenseIndex.deserialize(arr("dense.faiss.npy"))
            if faiss_index.ntotal != n:
                raise ValueError(f"dense.faiss.npy holds {faiss_index.ntotal} vectors, the manifest says {n}")
        self.dense = DenseIndex(self.fingerprint["hidden_size"], self.options["dense"], vectors, faiss_index)
        self.dense.dirty = False
        names = ("sparse.doc_indptr.npy", "sparse.doc_tokens.npy", "sparse.doc_weights.npy", "sparse.post_indptr.npy",
                 "sparse.post_docs.npy", "sparse.post_weights.npy")
        self.sparse = SparseIndex.from_arrays(self.fingerprint["vocab_size"], self.options["sparse"],
                                              {k: arr(k) for k in names}, n)
        if self.options["multivec"]:
            self.multivec = MultiVecStore.load(self.fingerprint["colbert_dim"], self.options["multivec"],
                                               manifest.get("multivec_segments", []), gen_dir,
                                               lambda d, name: load_array(d, name, mmap=mmap))
            if len(self.multivec) != n:
                raise ValueError(f"multivec segments cover {len(self.multivec)} rows, the manifest says {n}")
        self.docs = DocStore.load((gen_dir / "ids.json").read_bytes(), arr("docs.jsonl.npy"), arr("docs.offsets.npy"))
        if len(self.docs) != n:
            raise ValueError(f"ids.json has {len(self.docs)} ids, the manifest says {n}")
        live = np.asarray(arr("live.npy"), dtype=bool)
        if live.shape != (n,):
            raise ValueError(f"live.npy has shape {live.shape}, expected ({n},)")
        self._live = live.copy()
        self._live_dirty = False
        self._row_of = {self.docs.ids[r]: r for r in np.flatnonzero(live).tolist()}
        if len(self._row_of) != int(manifest.get("live", len(self._row_of))):
            raise ValueError(f"{len(self._row_of)} live ids, the manifest says {manifest.get('live')}")
        self._manifest = manifest
        self._gen_dir = gen_dir

    # ------------------------------------------------------------------ basic properties
    def __len__(self) -> int:
        """Number of live (not deleted) documents."""
        return len(self._row_of)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row_of

    def __repr__(self) -> str:
        mv = self.multivec.codec if self.multivec is not None else "none"
        return (f"M3Index({str(self.root)!r}, {len(self)} docs, dense={self.options['dense']['kind']}, "
                f"sparse={self.options['sparse']['dtype']}, multivec={mv})")

    @property
    def ids(self) -> list[str]:
        """Live document ids in row order."""
        return [self.docs.ids[r] for r in np.flatnonzero(self._live).tolist()]

    @property
    def n_rows(self) -> int:
        """Rows including deleted ones."""
        return len(self.docs)

    def live_mask(self) -> np.ndarray | None:
        """Bool mask of live rows, or ``None`` when nothing is deleted."""
        return None if self._live.all() else self._live

    def _require_writable(self, what: str) -> None:
        if not self.writable:
            raise PermissionError(f"{self.root}: index opened read-only; {what} needs "
                                  "M3Index.open(path, writable=True)")
        if self._lock is None or not self._lock.held:
            raise PermissionError(f"{self.root}: index is closed")

    # ------------------------------------------------------------------ writing
    def _check_new_ids(self, ids: Sequence[str]) -> None:
        seen: set[str] = set()
        for i, did in enumerate(ids):
            if not isinstance(did, str):
                raise TypeError(f"id at index {i} is {type(did).__name__}, expected str")
            if did in seen:
                raise ValueError(f"duplicate id {did!r} at index {i} of this batch")
            if did in self._row_of:
                raise ValueError(f"id {did!r} (index {i} of this batch) is already in the index; delete it first")
            seen.add(did)

    def ingest(self, encoded_dir: str | Path, *, verify: bool = True, codec_sample: int = 1024) -> int:
        """Add every document of a finished sharded encoding run (``m3embed encode --engine ray``, or
        :func:`m3embed.distributed.encode_shards`) without re-encoding; returns the rows added (``save`` commits).
        ``codec_sample``: documents drawn across the run's parts to fit a residual codebook on (0: the first part)."""
        from ..distributed.shards import ingest_encoded

        return ingest_encoded(self, encoded_dir, verify=verify, codec_sample=codec_sample)

    def fit_codec(self, sample: M3Output | ColbertVectors) -> None:
        """Fit the residual codebook on the ColBERT vectors of a representative sample of the corpus
        (e.g. ~1,000 documents drawn at random) before the first ``add``; without it the first
        ``add`` fits it on its own documents. ``M3Index.build`` does this itself (``codec_sample``)."""
        self._require_writable("fit_codec")
        if self.multivec is None:
            raise ValueError("this index stores no ColBERT vectors (built with multivec='none')")
        cv = sample.colbert if isinstance(sample, M3Output) else sample
        if cv is None:
            raise ValueError("the sample has no ColBERT vectors: encode it with return_colbert=True")
        self.multivec.fit(np.asarray(cv.data))

    def add(self, ids: Sequence[str], encoded: M3Output, texts: Sequence[str | None] | None = None,
            metadata: Sequence[dict | None] | None = None) -> None:
        """Add documents: ``encoded`` holds their dense vectors, lexical weights (and ColBERT vectors when
        the index stores them), one per id. Nothing changes when a check fails."""
        self._require_writable("add")
        ids = list(ids)
        n = len(ids)
        self._check_new_ids(ids)
        if len(encoded) != n:
            raise ValueError(f"{n} ids but {len(encoded)} encoded documents")
        if encoded.dense is None or encoded.lexical is None:
            raise ValueError("encoded documents need dense vectors and lexical weights "
                             "(encode with return_dense=True, return_sparse=True)")
        fp = self.fingerprint
        if encoded.dense.shape[1:] != (fp["hidden_size"],):
            raise ModelMismatchError(f"dense vectors are {encoded.dense.shape[1:]}-d; the index was built with "
                                     f"{fp['hidden_size']}-d vectors (model {fp.get('name') or '?'})")
        if encoded.lexical.vocab_size != fp["vocab_size"]:
            raise ModelMismatchError(f"lexical weights over {encoded.lexical.vocab_size} ids; the index uses "
                                     f"{fp['vocab_size']}")
        if self.multivec is not None:
            if encoded.colbert is None:
                raise ValueError("this index stores ColBERT vectors: encode with return_colbert=True "
                                 "(or build with multivec='none')")
            if encoded.colbert.data.ndim != 2 or encoded.colbert.data.shape[1] != fp["colbert_dim"]:
                raise ModelMismatchError(f"ColBERT vectors of shape {encoded.colbert.data.shape}; the index holds "
                                         f"{fp['colbert_dim']}-d vectors")
        for name, seq in (("texts", texts), ("metadata", metadata)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{n} ids but {len(seq)} {name}")
        if metadata is not None:
            for i, m in enumerate(metadata):
                if m is not None and not isinstance(m, Mapping):
                    raise TypeError(f"metadata at index {i} is {type(m).__name__}, expected a dict")
        if n == 0:
            return
        start = self.n_rows
        if self.multivec is not None:  # the slow, failure-prone part first: nothing is changed yet
            seg = self.multivec.encode(encoded.colbert, start, self.multivec.next_number())
            self._write_segment(seg)
            self.multivec.attach(seg)
        self.dense.add(encoded.dense)
        self.sparse.add(encoded.lexical)
        store = self.options["store_text"]
        self.docs.add(ids, list(texts) if (texts is not None and store) else None,
                      [dict(m) if m is not None else None for m in metadata] if metadata is not None else None)
        self._live = np.concatenate([self._live, np.ones(n, dtype=bool)])
        self._live_dirty = True
        for r, did in enumerate(ids, start=start):
            self._row_of[did] = r

    def _write_segment(self, seg: mv_mod.Segment) -> None:
        """Write a new segment into the staging directory now and map it back (bounded memory)."""
        assert self.multivec is not None
        if self._staging is None:
            self._staging = Staging(self.root)
        for name, arr in self.multivec.segment_files(seg).items():
            self._staging.write_array(name, arr)
        seg.offsets = np.load(self._staging.dir / seg.file("offsets"), mmap_mode="r")
        seg.arrays = {k: np.load(self._staging.dir / seg.file(k), mmap_mode="r") for k in seg.arrays}

    def delete(self, ids: Sequence[str]) -> None:
        """Remove documents by id (all or nothing: an unknown id raises ``KeyError`` and deletes none)."""
        self._require_writable("delete")
        if isinstance(ids, str):
            ids = [ids]
        ids = list(ids)
        unknown = [d for d in ids if d not in self._row_of]
        if unknown:
            raise KeyError(f"unknown id(s) {unknown[:5]}{' …' if len(unknown) > 5 else ''}: not in the index")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in delete")
        for d in ids:
            self._live[self._row_of.pop(d)] = False
        self._live_dirty = True

    def save(self) -> None:
        """Commit everything added or deleted since the last save as a new generation (atomic).

        If the save fails, the index on disk is the previous generation and this object returns to
        it too (the unsaved changes are dropped), so it never disagrees with what ``open`` would give.
        """
        self._require_writable("save")
        st = self._staging or Staging(self.root)
        self._staging = None
        try:
            self._write_generation(st)
        except BaseException:
            # the staged segments are gone with the staging directory: go back to the committed state
            st.abort()
            self._reload_after_failed_save()
            raise

    def _write_generation(self, st: Staging) -> None:
        prev = self._manifest["files"] if self._manifest else {}

        def reuse(name: str) -> bool:
            if self._gen_dir is not None and name in prev and not st.has(name):
                st.link(name, self._gen_dir / name, prev[name])
                return True
            return False

        if self.dense.dirty or not reuse("dense.npy"):
            st.write_array("dense.npy", np.asarray(self.dense.vectors, dtype=np.float32))
            if self.dense.stored_index:
                st.write_array("dense.faiss.npy", self.dense.serialize())
        elif self.dense.stored_index:
            reuse("dense.faiss.npy")
        sparse_arrays = None
        for name in ("sparse.doc_indptr.npy", "sparse.doc_tokens.npy", "sparse.doc_weights.npy",
                     "sparse.post_indptr.npy", "sparse.post_docs.npy", "sparse.post_weights.npy"):
            if self.sparse.dirty or not reuse(name):
                sparse_arrays = sparse_arrays or self.sparse.arrays()
                st.write_array(name, sparse_arrays[name])
        if self.docs.dirty or not (reuse("docs.jsonl.npy") and reuse("docs.offsets.npy") and reuse("ids.json")):
            blob, offsets, ids_raw = self.docs.arrays()
            st.write_array("docs.jsonl.npy", np.frombuffer(blob, dtype=np.uint8))
            st.write_array("docs.offsets.npy", offsets)
            st.write_bytes("ids.json", ids_raw)
        if self._live_dirty or not reuse("live.npy"):
            st.write_array("live.npy", self._live)
        segments: list[dict[str, Any]] = []
        if self.multivec is not None:
            mv = self.multivec
            if mv.residual is not None:
                for name, a in mv.residual.arrays().items():
                    if mv.codec_dirty or not reuse(name):
                        st.write_array(name, a)
            for seg in mv.segments:
                for name in mv.segment_files(seg):
                    if not st.has(name) and not reuse(name):
                        st.write_array(name, mv.segment_files(seg)[name])
            segments = mv.describe()
        manifest = {
            "model": self.fingerprint, "count": self.n_rows, "live": len(self), "multivec_segments": segments,
            "options": {"dense": self.options["dense"], "sparse": self.options["sparse"],
                        "multivec": self.options["multivec"], "store_text": self.options["store_text"]},
            "stats": {"sparse_nnz": self.sparse.nnz,
                      "multivec_vectors": self.multivec.n_vectors if self.multivec is not None else 0,
                      "multivec_bytes": self.multivec.nbytes() if self.multivec is not None else 0},
        }
        from .. import __version__

        manifest["m3embed_version"] = __version__
        expected = set(st.files)
        if self.multivec is not None:
            for seg in self.multivec.segments:
                expected.update(self.multivec.segment_files(seg))
        generation = st.commit(manifest, keep=expected)
        self._manifest = read_manifest(self.root)
        assert self._manifest["generation"] == generation
        self._gen_dir = self.root / f"gen-{generation:06d}"
        self.dense.dirty = self.sparse.dirty = self.docs.dirty = False
        self._live_dirty = False
        if self.multivec is not None:
            self.multivec.codec_dirty = False

    def _reload_after_failed_save(self) -> None:
        if self._manifest is None:
            if self.options["multivec"]:
                self.multivec = MultiVecStore(self.fingerprint["colbert_dim"], self.options["multivec"])
            self.dense = DenseIndex(self.fingerprint["hidden_size"], self.options["dense"])
            self.sparse = SparseIndex(self.fingerprint["vocab_size"], self.options["sparse"])
            self.docs = DocStore()
            self._live = np.zeros(0, dtype=bool)
            self._live_dirty = True
            self._row_of = {}
        else:
            assert self._gen_dir is not None
            self._load(self._gen_dir, self._manifest, int(self._manifest["count"]))

    def compact(self) -> None:
        """Drop deleted rows for good (renumbers rows); then ``save``."""
        self._require_writable("compact")
        rows = np.flatnonzero(self._live)
        if len(rows) == self.n_rows:
            return
        if self.multivec is not None:
            if self._staging is None:
                self._staging = Staging(self.root)
            for seg in self.multivec.keep_rows(rows, self.multivec.next_number()):
                self._write_segment(seg)
        self.dense.keep_rows(rows)
        self.sparse.keep_rows(rows)
        self.docs.keep_rows(rows)
        self._live = np.ones(len(rows), dtype=bool)
        self._live_dirty = True
        self._row_of = {d: r for r, d in enumerate(self.docs.ids)}
        self.save()

    def close(self, *, discard: bool = False) -> None:
        """Release the writer lock (unsaved changes are lost); ``discard`` also deletes a temporary index."""
        if self._staging is not None:
            self._staging.abort()
            self._staging = None
        if self._lock is not None:
            self._lock.release()
        if discard:
            self._finalizer()

    def __enter__(self) -> M3Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ search
    def search(self, queries: Sequence[str] | str | M3Output, k: int = 10, mode: str = "all", *,
               model: M3Model | None = None, weights: Sequence[float] | None = None, dense_depth: int | None = None,
               sparse_depth: int | None = None, rerank_depth: int | None = None, colbert_depth: int | None = None,
               batch_size: int = 32, max_length: int = 512, check_model: bool = True) -> list[list[SearchHit]]:
        """Top-``k`` documents per query, best first (fewer when the index has fewer matches).

        ``queries``: texts (encoded with ``model``, else the model that built the index, else the
        manifest's model path) or an ``M3Output`` of already encoded queries. ``mode``: one of
        ``dense``, ``sparse``, ``multivec``, ``dense+sparse``, ``all``, ``rrf`` (see
        :mod:`m3embed.index.search` for the candidate depths and weights).
        """
        if mode not in search_mod.MODES:
            raise ValueError(f"mode {mode!r}: expected one of {search_mod.MODES}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        need = search_mod.needs(mode, self.multivec is not None)
        if "colbert" in need and self.multivec is None and mode != "rrf":
            raise ValueError(f"mode {mode!r} needs token vectors, but this index was built with multivec='none'")
        if isinstance(queries, M3Output):
            q = queries
            self._check_query_output(q, need)
        else:
            if isinstance(queries, str):
                queries = [queries]
            q = self._encode_queries(list(queries), need, model, batch_size, max_length, check_model)
        if len(q) == 0:
            return []
        hits = search_mod.run(self, q, int(k), mode, weights=weights, dense_depth=dense_depth,
                              sparse_depth=sparse_depth, rerank_depth=rerank_depth, colbert_depth=colbert_depth)
        out = []
        for per_query in hits:
            res = []
            for row, score, comp in per_query:
                text, meta = self.docs.get(row)
                res.append(SearchHit(self.docs.ids[row], score, text, meta, comp))
            out.append(res)
        return out

    def _check_query_output(self, q: M3Output, need: set[str]) -> None:
        check_query_output(self.fingerprint, q, need)

    def _encode_queries(self, queries: list[str], need: set[str], model: M3Model | None, batch_size: int,
                        max_length: int, check_model: bool) -> M3Output:
        check_query_texts(queries)  # before loading any model
        if model is None:
            model = self.model or self._load_manifest_model()
        elif model is not self.model:
            _check_model(self.fingerprint, model_fingerprint(model), strict=check_model)
        return encode_queries(queries, need, model, batch_size=batch_size, max_length=max_length)

    def _load_manifest_model(self) -> M3Model:
        name = self.fingerprint.get("name")
        if not name:
            raise ValueError("no model to encode the queries: pass model=… (the index does not record one)")
        from ..model import M3Model

        try:
            model = M3Model.from_pretrained(name)
        except Exception as e:
            raise ValueError(f"cannot load the index's model {name!r} to encode queries ({e}); pass model=…") from e
        _check_model(self.fingerprint, model_fingerprint(model), strict=True)
        self.model = model
        return model


def _cleanup(lock: WriterLock | None, temp_root: Path | None) -> None:
    if lock is not None:
        lock.release()
    if temp_root is not None:
        shutil.rmtree(temp_root, ignore_errors=True)


def _progress(show: bool, total: int | None):
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not show:
        class _Null:
            def add_task(self, *a: Any, **k: Any) -> int:
                return 0

            def advance(self, *a: Any, **k: Any) -> None:
                pass

        return nullcontext(_Null())
    from rich.console import Console

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=False)
