"""Document ids, optional stored text and metadata, and corpus reading for ``M3Index.build``.

Ids live in ``ids.json`` (a JSON list, row order); texts and metadata in ``docs.jsonl`` (one JSON
object per row) with byte offsets in ``docs.offsets.npy``, so a hit's text is read from the
memory-mapped file without parsing the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..io import iter_jsonl


class DocStore:
    """Row → (id, text, metadata); committed rows are memory-mapped, new rows are kept in memory.

    ``docs.jsonl`` holds each record followed by ``"\\n"``; ``docs.offsets.npy [n+1]`` the start of
    each record (and the file's end), so record r is ``blob[off[r] : off[r+1] - 1]``.
    """

    def __init__(self, ids: list[str] | None = None, blob: np.ndarray | None = None,
                 offsets: np.ndarray | None = None) -> None:
        self.ids: list[str] = ids if ids is not None else []
        self._blob = blob if blob is not None else np.zeros(0, np.uint8)
        self._offsets = offsets if offsets is not None else np.zeros(1, np.int64)
        self._pending: list[bytes] = []
        self.dirty = ids is None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def _n_committed(self) -> int:
        return len(self._offsets) - 1

    def add(self, ids: list[str], texts: list[str | None] | None, metadata: list[dict | None] | None) -> None:
        for i in range(len(ids)):
            rec: dict[str, Any] = {}
            if texts is not None and texts[i] is not None:
                rec["text"] = texts[i]
            if metadata is not None and metadata[i] is not None:
                rec["metadata"] = metadata[i]
            self._pending.append(json.dumps(rec, ensure_ascii=False).encode("utf-8"))
        self.ids.extend(ids)
        self.dirty = True

    def _raw(self, row: int) -> bytes:
        if row < self._n_committed:
            return bytes(self._blob[self._offsets[row] : self._offsets[row + 1] - 1])
        return self._pending[row - self._n_committed]

    def get(self, row: int) -> tuple[str | None, dict | None]:
        raw = self._raw(row)
        rec = json.loads(raw) if raw else {}
        return rec.get("text"), rec.get("metadata")

    def arrays(self) -> tuple[bytes, np.ndarray, bytes]:
        """(``docs.jsonl`` bytes, ``docs.offsets.npy``, ``ids.json`` bytes) of every row."""
        body = bytearray(bytes(self._blob[: self._offsets[-1]]))
        lengths = [len(p) + 1 for p in self._pending]
        for p in self._pending:
            body += p + b"\n"
        offsets = np.concatenate([np.asarray(self._offsets, np.int64),
                                  self._offsets[-1] + np.cumsum(np.asarray(lengths, np.int64))])
        return bytes(body), offsets, json.dumps(self.ids, ensure_ascii=False).encode("utf-8")

    @classmethod
    def load(cls, ids_raw: bytes, blob: np.ndarray, offsets: np.ndarray) -> DocStore:
        try:
            ids = json.loads(ids_raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"ids.json is not valid JSON ({e})") from None
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise ValueError("ids.json is not a JSON list of strings")
        offsets = np.asarray(offsets, np.int64)
        if len(offsets) != len(ids) + 1:
            raise ValueError(f"docs.offsets.npy has {len(offsets) - 1} rows, ids.json {len(ids)}")
        if offsets[0] != 0 or offsets[-1] != len(blob) or (np.diff(offsets) < 1).any():
            raise ValueError("docs.offsets.npy does not match docs.jsonl")
        store = cls(ids, blob, offsets)
        store.dirty = False
        return store

    def keep_rows(self, rows: np.ndarray) -> None:
        recs = [self._raw(r) for r in rows.tolist()]
        self.ids = [self.ids[r] for r in rows.tolist()]
        self._blob = np.zeros(0, np.uint8)
        self._offsets = np.zeros(1, np.int64)
        self._pending = recs
        self.dirty = True


def read_corpus(corpus: str | Path | Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, str, dict | None]]:
    """Yield ``(id, text, metadata)`` from dicts or a ``.jsonl`` file (BEIR ``corpus.jsonl`` layout).

    Each record needs ``"_id"`` or ``"id"`` (str or int) and ``"text"``; a non-empty ``"title"`` is
    prepended as ``title + " " + text`` (as BEIR loaders do) and kept in the metadata. Errors name
    the file and line (or the record's index).
    """
    if isinstance(corpus, str | Path):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such corpus file")
        for n, obj in iter_jsonl(path):
            yield _record(obj, f"{path}:{n}")
    else:
        for i, obj in enumerate(corpus):
            yield _record(obj, f"corpus record {i}")


def _record(obj: Any, where: str) -> tuple[str, str, dict | None]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected an object with 'id' and 'text', got {type(obj).__name__}")
    did = obj.get("_id", obj.get("id"))
    if did is None:
        raise ValueError(f"{where}: no '_id' or 'id' field")
    if not isinstance(did, str | int) or isinstance(did, bool):
        raise ValueError(f"{where}: id is {type(did).__name__}, expected a string")
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}: 'text' is {'missing' if text is None else type(text).__name__}, expected a string")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        raise ValueError(f"{where}: 'metadata' is {type(meta).__name__}, expected an object")
    meta = dict(meta) if meta is not None else None
    title = obj.get("title")
    if isinstance(title, str) and title.strip():
        text = f"{title} {text}"
        meta = {**(meta or {}), "title": title}
    return str(did), text, meta


def count_records(corpus: Any) -> int | None:
    """Number of records when cheap to know (a sized collection or a file's non-blank lines)."""
    if isinstance(corpus, str | Path):
        with open(corpus, "rb") as f:
            return sum(1 for line in f if line.strip())
    try:
        return len(corpus)
    except TypeError:
        return None
