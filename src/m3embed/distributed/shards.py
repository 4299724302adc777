"""Shards, parts and per-part outputs of a distributed encoding run.

An *input shard* is one ``.jsonl`` or ``.parquet`` file (a directory or a glob names many). Each
shard is cut into *parts* of at most ``part_rows`` records — the unit of work, of retry and of
resume. A part of a ``.jsonl`` shard is a byte range (found by one scan of the file, cached in the
manifest), so a worker reads its records without scanning the file from the top; a part of a
``.parquet`` shard is a row range read from the row groups that overlap it.

Every part becomes one output file ``OUT/parts/<shard>-<hash>.<part>.parquet``, written atomically
(temp file, fsync, rename). ``OUT/manifest.json`` (written only by the driver, atomically) records
the encode settings, the model fingerprint, the part plan of every shard and, per finished part,
its row count, byte size and sha256. A part whose file is missing, truncated or altered fails that
check and is encoded again on the next run; the others are skipped.

Output columns (one row per input record, in input order)::

    id         string            the record's "_id" / "id" (or "<shard>:<row>" when it has none)
    row        int64             record number within the shard (0-based)
    n_tokens   int32             tokens fed to the model, specials included
    dense      fixed_size_list<float32>[H]                    (when encoded)
    sparse_ids list<int32>, sparse_weights list<float32>      token ids (first-occurrence order) / weights
    colbert    list<fixed_size_list<float32>[D]>              one D-vector per token but [CLS]
    text       string, metadata string (JSON or null)         (when the run stores text)

The schema metadata key ``m3embed`` holds ``{"format", "version", "vocab_size", "hidden_size",
"colbert_dim"}``, so a part file is readable on its own (:func:`read_part_output`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import atomic_write
from ..output import ColbertVectors, LexicalWeights, M3Output

if TYPE_CHECKING:
    from ..index.core import M3Index

FORMAT = "m3embed-encoded"
FORMAT_VERSION = 1
PART_FORMAT = "m3embed-encoded-part"
MANIFEST = "manifest.json"
PARTS_DIR = "parts"
SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}
_GLOB_CHARS = re.compile(r"[*?\[]")


class EncodedCorruptError(ValueError):
    """An encoded output directory (or part file) that does not match its manifest."""


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("sharded encoding reads and writes parquet: pip install 'm3embed[ray]' "
                          "(or pip install pyarrow)") from e
    return pa, pc, pq


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class EncodeSettings:
    """What a run encodes; a resumed run must use the same (the batch size may differ)."""

    dense: bool = True
    sparse: bool = True
    colbert: bool = False
    max_length: int = 512
    mcls: bool = False
    truncation: bool = True
    records: str = "field"  # "field": text from `field`; "corpus": M3Index.build's records (id, title + text)
    field: str = "text"
    store_text: bool = True
    part_rows: int = 2048

    def __post_init__(self) -> None:
        if self.records not in ("field", "corpus"):
            raise ValueError(f"records {self.records!r}: expected 'field' or 'corpus'")
        if self.part_rows < 1:
            raise ValueError(f"part_rows must be >= 1, got {self.part_rows}")
        if not (self.dense or self.sparse or self.colbert):
            raise ValueError("nothing to encode: enable at least one of dense, sparse, colbert")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------- shards and parts
@dataclass(frozen=True)
class Shard:
    """One input file: ``rel`` is its name relative to the input root (stable across runs)."""

    path: str
    rel: str
    kind: str  # "jsonl" | "parquet"
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Part:
    """Records ``start:stop`` of one shard; ``.jsonl`` parts also carry their byte range and first line."""

    key: str  # "<rel>#<index>"
    path: str
    rel: str
    kind: str
    index: int
    start: int
    stop: int
    byte_start: int
    byte_stop: int
    first_line: int  # 1-based line number of byte_start (jsonl), for error messages
    file: str  # output file, relative to the output directory

    @property
    def rows(self) -> int:
        return self.stop - self.start


def discover_shards(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Shard]:
    """Input shards of a file, a directory (every ``.jsonl`` / ``.parquet`` below it) or a glob.

    A list may mix all three. Hidden files (name starting with ``.``) are ignored; shards are
    sorted by path, which fixes the row order of the output.
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not items:
        raise ValueError("no input shards given")
    found: dict[str, Shard] = {}
    for item in items:
        s = os.fspath(item)
        if _GLOB_CHARS.search(s):
            base = Path(_glob_base(s))
            paths = [Path(p) for p in sorted(glob.glob(s, recursive=True)) if Path(p).is_file()]
            paths = [p for p in paths if p.suffix in SUFFIXES and not p.name.startswith(".")]
            if not paths:
                raise FileNotFoundError(f"{s}: the pattern matches no .jsonl or .parquet file")
        elif Path(s).is_dir():
            base = Path(s)
            paths = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(base).parts))
            if not paths:
                raise FileNotFoundError(f"{s}: directory holds no .jsonl or .parquet file")
        elif Path(s).is_file():
            p = Path(s)
            if p.suffix not in SUFFIXES:
                raise ValueError(f"{p}: unsupported shard type {p.suffix!r} (expected .jsonl or .parquet)")
            base, paths = p.parent, [p]
        else:
            raise FileNotFoundError(f"{s}: no such file or directory")
        for p in paths:
            st = p.stat()
            rel = p.relative_to(base).as_posix() if len(items) == 1 else str(p.resolve())
            found.setdefault(str(p.resolve()), Shard(str(p.resolve()), rel, SUFFIXES[p.suffix], st.st_size,
                                                     st.st_mtime_ns))
    return sorted(found.values(), key=lambda sh: sh.rel)


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    keep = []
    for p in parts:
        if _GLOB_CHARS.search(p):
            break
        keep.append(p)
    return str(Path(*keep)) if keep else "."


def part_file(rel: str, index: int) -> str:
    """Output file of part ``index`` of shard ``rel``: readable, and unique through a hash of ``rel``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", rel)[-80:]
    digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
    return f"{PARTS_DIR}/{safe}-{digest}.{index:05d}.parquet"


def plan_parts(shards: Sequence[Shard], part_rows: int,
               cache: Mapping[str, Any] | None = None) -> tuple[list[Part], dict[str, Any]]:
    """Cut every shard into parts of ``part_rows`` records.

    ``cache``: the ``shards`` entry of a previous manifest; a shard whose size, mtime and part size
    are unchanged reuses its recorded parts instead of being scanned again. Returns the parts in
    output order and the new ``shards`` entry.
    """
    parts: list[Part] = []
    info: dict[str, Any] = {}
    for sh in shards:
        c = (cache or {}).get(sh.rel)
        if (c is not None and c.get("size") == sh.size and c.get("mtime_ns") == sh.mtime_ns
                and c.get("part_rows") == part_rows and c.get("kind") == sh.kind):
            ranges, rows = [tuple(r) for r in c["parts"]], int(c["rows"])
        else:
            ranges, rows = (_scan_jsonl(sh.path, part_rows) if sh.kind == "jsonl"
                            else _scan_parquet(sh.path, part_rows))
        info[sh.rel] = {"path": sh.path, "kind": sh.kind, "size": sh.size, "mtime_ns": sh.mtime_ns,
                        "part_rows": part_rows, "rows": rows, "parts": [list(r) for r in ranges]}
        for k, (a, b, ba, bb, line) in enumerate(ranges):
            parts.append(Part(f"{sh.rel}#{k:05d}", sh.path, sh.rel, sh.kind, k, int(a), int(b), int(ba), int(bb),
                              int(line), part_file(sh.rel, k)))
    return parts, info


def _scan_jsonl(path: str, part_rows: int) -> tuple[list[tuple[int, int, int, int, int]], int]:
    """(start row, stop row, start byte, stop byte, first line) per part; blank lines are not records."""
    ranges: list[list[int]] = []
    row = pos = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                if row % part_rows == 0:
                    if ranges:
                        ranges[-1][1], ranges[-1][3] = row, pos
                    ranges.append([row, -1, pos, -1, line_no])
                row += 1
            pos += len(line)
    if ranges:
        ranges[-1][1], ranges[-1][3] = row, pos
    return [tuple(r) for r in ranges], row  # type: ignore[misc]


def _scan_parquet(path: str, part_rows: int) -> tuple[list[tuple[int, int, int, int, int]], int]:
    _, _, pq = _pyarrow()
    try:
        n = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    return [(a, min(a + part_rows, n), -1, -1, 0) for a in range(0, n, part_rows)], n


# ---------------------------------------------------------------------------------------- reading records
def part_records(part: Part, settings: EncodeSettings) -> tuple[list[str], list[str], list[dict | None]]:
    """(ids, texts, metadata) of a part's records, checked; errors name the file and line / record."""
    raw = _read_jsonl_part(part) if part.kind == "jsonl" else _read_parquet_part(part, settings)
    if len(raw) != part.rows:
        raise ValueError(f"{part.path}: part {part.index} holds {len(raw)} records where the plan says {part.rows} "
                         "(the file changed after it was planned?)")
    ids: list[str] = []
    texts: list[str] = []
    metas: list[dict | None] = []
    if settings.records == "corpus":
        from ..index.docs import _record  # M3Index.build's record rules: id, title + " " + text, metadata

        for obj, where in raw:
            did, text, meta = _record(obj, where)
            ids.append(did)
            texts.append(text)
            metas.append(meta)
    else:
        field = settings.field
        for i, (obj, where) in enumerate(raw):
            if not isinstance(obj, Mapping) or field not in obj:
                raise ValueError(f"{where}: expected an object with a {field!r} field")
            text = obj[field]
            if not isinstance(text, str):
                raise ValueError(f"{where}: field {field!r} is {type(text).__name__}, expected a string")
            did = obj.get("_id", obj.get("id"))
            ids.append(str(did) if did is not None else f"{part.rel}:{part.start + i}")
            texts.append(text)
            metas.append(None)
    return ids, texts, metas


def _read_jsonl_part(part: Part) -> list[tuple[Any, str]]:
    with open(part.path, "rb") as f:
        f.seek(part.byte_start)
        data = f.read(part.byte_stop - part.byte_start)
    out = []
    for n, line in enumerate(data.split(b"\n"), start=part.first_line):
        if not line.strip():
            continue
        where = f"{part.path}:{n}"
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        out.append((obj, where))
    return out


def _read_parquet_part(part: Part, settings: EncodeSettings) -> list[tuple[Any, str]]:
    _, _, pq = _pyarrow()
    pf = pq.ParquetFile(part.path)
    names = set(pf.schema_arrow.names)
    text_col = "text" if settings.records == "corpus" else settings.field
    if text_col not in names:
        raise ValueError(f"{part.path}: no {text_col!r} column (columns: {', '.join(sorted(names))})")
    wanted = ["_id", "id", text_col] + (["title", "metadata"] if settings.records == "corpus" else [])
    cols = [c for c in dict.fromkeys(wanted) if c in names]
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    groups = [i for i in range(len(sizes)) if starts[i] < part.stop and starts[i + 1] > part.start]
    table = pf.read_row_groups(groups, columns=cols) if groups else pf.schema_arrow.empty_table().select(cols)
    first = int(starts[groups[0]]) if groups else 0
    rows = table.slice(part.start - first, part.rows).to_pylist()
    out = []
    for i, obj in enumerate(rows):
        meta = obj.get("metadata")
        if isinstance(meta, str):  # metadata stored as a JSON string column
            try:
                obj["metadata"] = json.loads(meta)
            except json.JSONDecodeError:
                raise ValueError(f"{part.path}: record {part.start + i}: 'metadata' is not valid JSON") from None
        elif meta is None:
            obj.pop("metadata", None)
        out.append((obj, f"{part.path}: record {part.start + i}"))
    return out


# ---------------------------------------------------------------------------------------- part outputs
@dataclass
class EncodedPart:
    """One part's outputs as read back: ids, record numbers, encodings, and text / metadata when stored."""

    ids: list[str]
    rows: np.ndarray  # [N] int64
    output: M3Output
    texts: list[str] | None
    metadata: list[dict | None] | None


def write_part_output(path: str | os.PathLike[str], ids: Sequence[str], rows: np.ndarray, out: M3Output,
                      texts: Sequence[str] | None, metadata: Sequence[dict | None] | None, *,
                      vocab_size: int, hidden_size: int, colbert_dim: int) -> tuple[int, str]:
    """Write one part's parquet file atomically (temp, fsync, rename); returns (bytes, sha256)."""
    pa, _, pq = _pyarrow()
    n = len(ids)
    cols: dict[str, Any] = {"id": pa.array(list(ids), pa.string()), "row": pa.array(np.asarray(rows, np.int64)),
                            "n_tokens": pa.array(np.asarray(out.n_tokens, np.int32))}
    if out.dense is not None:
        cols["dense"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(out.dense, np.float32).reshape(-1)), out.dense.shape[1])
    if out.lexical is not None:
        off = pa.array(np.asarray(out.lexical.indptr, np.int32))
        cols["sparse_ids"] = pa.ListArray.from_arrays(off, pa.array(np.asarray(out.lexical.ids, np.int32)))
        cols["sparse_weights"] = pa.ListArray.from_arrays(off, pa.array(np.asarray(out.lexical.weights, np.float32)))
    if out.colbert is not None:
        d = out.colbert.data.shape[1]
        inner = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(out.colbert.data,
                                                                                np.float32).reshape(-1)), d)
        cols["colbert"] = pa.ListArray.from_arrays(pa.array(np.asarray(out.colbert.offsets, np.int32)), inner)
    if texts is not None:
        cols["text"] = pa.array(list(texts), pa.string())
        cols["metadata"] = pa.array([json.dumps(m, ensure_ascii=False) if m is not None else None
                                     for m in (metadata or [None] * n)], pa.string())
    meta = {"format": PART_FORMAT, "version": FORMAT_VERSION, "vocab_size": int(vocab_size),
            "hidden_size": int(hidden_size), "colbert_dim": int(colbert_dim)}
    table = pa.table(cols).replace_schema_metadata({"m3embed": json.dumps(meta)})
    # vectors do not compress; ids, text and metadata do
    compression = {c: ("zstd" if c in ("id", "text", "metadata") else "none") for c in cols}
    path = Path(path)
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f, compression=compression, use_dictionary=False, write_statistics=False)
    _fsync_dir(path.parent)
    return path.stat().st_size, sha256_file(path)


def read_part_output(path: str | os.PathLike[str]) -> EncodedPart:
    """Read one part file back into ids, record numbers and an :class:`M3Output` (bitwise what was written)."""
    _, pc, pq = _pyarrow()
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"m3embed", b"{}"))
    except Exception as e:
        raise EncodedCorruptError(f"{path}: unreadable part file ({type(e).__name__}: {e})") from None
    if meta.get("format") != PART_FORMAT:
        raise EncodedCorruptError(f"{path}: not an m3embed encoded part (schema metadata {meta!r})")
    names = set(table.column_names)
    n = table.num_rows

    def col(name: str):
        return table.column(name).combine_chunks()

    out = M3Output(n_tokens=col("n_tokens").to_numpy().astype(np.int64))
    if "dense" in names:
        h = int(meta["hidden_size"])
        out.dense = np.ascontiguousarray(col("dense").flatten().to_numpy().reshape(n, h))
    if "sparse_ids" in names:
        ids_col, w_col = col("sparse_ids"), col("sparse_weights")
        lengths = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False).astype(np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out.lexical = LexicalWeights(indptr, pc.list_flatten(ids_col).to_numpy().astype(np.int64),
                                     pc.list_flatten(w_col).to_numpy().astype(np.float32), int(meta["vocab_size"]))
    if "colbert" in names:
        c = col("colbert")
        d = int(meta["colbert_dim"])
        lengths = pc.list_value_length(c).to_numpy(zero_copy_only=False).astype(np.int64)
        data = pc.list_flatten(c).flatten().to_numpy().reshape(-1, d)
        out.colbert = ColbertVectors(np.ascontiguousarray(data, np.float32),
                                     np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    texts = metadata = None
    if "text" in names:
        texts = col("text").to_pylist()
        metadata = [json.loads(m) if m is not None else None for m in col("metadata").to_pylist()]
    return EncodedPart(col("id").to_pylist(), col("row").to_numpy().astype(np.int64), out, texts, metadata)


# ---------------------------------------------------------------------------------------- manifest
def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of an output directory; ``None`` when there is none yet."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncodedCorruptError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise EncodedCorruptError(f"{path}: not an m3embed encoded-output manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise EncodedCorruptError(f"{path}: format version {m.get('format_version')!r}; this m3embed reads "
                                  f"version {FORMAT_VERSION}")
    for key in ("settings", "shards", "plan", "parts"):
        if key not in m:
            raise EncodedCorruptError(f"{path}: manifest lacks {key!r}")
    return m


def write_manifest(root: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    body = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION)
    body["complete"] = all(k in body["parts"] for k in body["plan"])
    with atomic_write(Path(root) / MANIFEST, "w") as f:
        json.dump(body, f, indent=1)
    _fsync_dir(Path(root))


def entry_problem(root: str | os.PathLike[str], part: Part | None, entry: Mapping[str, Any], *,
                  checksum: bool = True) -> str | None:
    """Why a finished part's output cannot be trusted (``None`` when it verifies)."""
    if part is not None and (entry.get("start"), entry.get("stop"), entry.get("file")) != (part.start, part.stop,
                                                                                            part.file):
        return "the part plan changed"
    f = Path(root) / entry["file"]
    if not f.is_file():
        return f"{f}: missing"
    size = f.stat().st_size
    if size != entry["bytes"]:
        return f"{f}: {size} bytes, the manifest says {entry['bytes']} (truncated or altered)"
    if checksum and sha256_file(f) != entry["sha256"]:
        return f"{f}: sha256 does not match the manifest (altered or damaged)"
    return None


def clean_parts_dir(root: str | os.PathLike[str], keep: set[str]) -> list[str]:
    """Delete files under ``ROOT/parts`` not named in ``keep`` (stale temp files, parts of an old plan)."""
    d = Path(root) / PARTS_DIR
    removed = []
    if d.is_dir():
        for f in d.iterdir():
            if f"{PARTS_DIR}/{f.name}" not in keep:
                if f.is_dir():
                    shutil.rmtree(f)
                else:
                    f.unlink()
                removed.append(f.name)
    return removed


# ---------------------------------------------------------------------------------------- reading a run back
def read_encoded(root: str | os.PathLike[str], *, verify: bool = True) -> Iterator[EncodedPart]:
    """Every part of a finished run, in input order (shards sorted by path, parts by row).

    ``verify`` checks each file's sha256 against the manifest first. Raises
    :class:`EncodedCorruptError` for an unfinished run or a file that does not verify.
    """
    root = Path(root)
    m = read_manifest(root)
    if m is None:
        raise FileNotFoundError(f"{root}: no {MANIFEST} (not an encoded-output directory)")
    missing = _missing_parts(m)
    if missing:
        raise EncodedCorruptError(f"{root}: encoding is not finished ({len(m['plan']) - len(missing)} of "
                                  f"{len(m['plan'])} parts done, e.g. {missing[0]} is missing); rerun the encoder "
                                  "on the same output directory to finish it")
    for key in m["plan"]:
        yield _read_entry(root, m["parts"][key], verify)


def _missing_parts(m: Mapping[str, Any]) -> list[str]:
    return [k for k in m["plan"] if k not in m["parts"]]


def _read_entry(root: Path, entry: Mapping[str, Any], verify: bool) -> EncodedPart:
    problem = entry_problem(root, None, entry, checksum=verify)
    if problem is not None:
        raise EncodedCorruptError(f"{problem}; rerun the encoder on {root} to re-encode it")
    part = read_part_output(root / entry["file"])
    if len(part.ids) != entry["rows"]:
        raise EncodedCorruptError(f"{root / entry['file']}: {len(part.ids)} rows, the manifest says {entry['rows']}")
    return part


CODEC_SAMPLE_PARTS = 16  # parts read for the codebook sample: bounds the extra reads of a large run


def _fit_codec_on_parts(index: M3Index, root: Path, m: Mapping[str, Any], n: int, verify: bool) -> None:
    """Fit ``index``'s residual codebook on ``n`` documents drawn from up to :data:`CODEC_SAMPLE_PARTS`
    parts spread evenly over the run (``n / parts`` at random from each), instead of on the first
    part that ``add`` would see: one shard's source or language."""
    keys = m["plan"]
    picks = np.unique(np.linspace(0, len(keys) - 1, min(len(keys), CODEC_SAMPLE_PARTS)).round().astype(int))
    per_part = -(-n // len(picks))
    rng = np.random.default_rng(index.multivec.opts["seed"])
    mats: list[np.ndarray] = []
    for i in picks.tolist():
        cv = _read_entry(root, m["parts"][keys[i]], verify).output.colbert
        rows = np.sort(rng.choice(len(cv), min(per_part, len(cv)), replace=False))
        mats += [np.asarray(cv[r]) for r in rows.tolist()]
    data = np.concatenate(mats) if mats else np.zeros((0, index.multivec.dim), np.float32)
    index.multivec.fit(data, what=f"the codebook sample of {root}")


def ingest_encoded(index: M3Index, root: str | os.PathLike[str], *, verify: bool = True,
                   progress: Any = None, codec_sample: int = 1024) -> int:
    """Add every document of a finished encoding run at ``root`` to a writable ``index`` (no re-encoding).

    The run's model must be the index's (fingerprint check), and it must hold dense vectors and
    lexical weights (and ColBERT vectors when the index stores them). Returns the rows added; the
    caller saves the index. ``progress(n)`` is called after each part. ``codec_sample``: an empty
    index with the ``residual`` codec and a run of several parts first fits its codebook on that
    many documents drawn from parts across the whole run (0: on the first part, as ``add`` does).
    """
    from ..index.core import _check_model
    from ..index.multivec import check_codec_sample

    root = Path(root)
    m = read_manifest(root)
    if m is None:
        raise FileNotFoundError(f"{root}: no {MANIFEST} (not an encoded-output directory)")
    if m.get("model"):
        _check_model(index.fingerprint, m["model"], strict=True)
    s = m["settings"]
    if not (s.get("dense") and s.get("sparse")):
        raise ValueError(f"{root}: an index needs dense vectors and lexical weights; this run encoded "
                         f"dense={s.get('dense')}, sparse={s.get('sparse')}")
    if index.multivec is not None and not s.get("colbert"):
        raise ValueError(f"{root}: the index stores ColBERT vectors but this run did not encode them "
                         "(encode with colbert=True, or build the index with multivec='none')")
    check_codec_sample(codec_sample)
    mv = index.multivec
    # an unfinished run is left to read_encoded, which names the missing part
    if mv is not None and mv.needs_fit and codec_sample > 0 and len(m["plan"]) > 1 and not _missing_parts(m):
        _fit_codec_on_parts(index, root, m, codec_sample, verify)
    n = 0
    for part in read_encoded(root, verify=verify):
        out = part.output
        if index.multivec is None:
            out = M3Output(dense=out.dense, lexical=out.lexical, n_tokens=out.n_tokens)
        index.add(part.ids, out, texts=part.texts, metadata=part.metadata)
        n += len(part.ids)
        if progress is not None:
            progress(len(part.ids))
    return n
