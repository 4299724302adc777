"""Reading text files and writing encodings, with line-numbered errors and atomic writes."""

from __future__ import annotations

import base64
import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from .output import M3Output


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the line end) of each line of a text file (``.gz`` allowed); bytes are
    decoded per line so that a bad UTF-8 sequence is reported with its own line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            yield n, line.rstrip("\n").rstrip("\r")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON-lines file (``.gz`` allowed)."""
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def read_texts(path: str | Path, *, field: str = "text") -> list[str]:
    """Texts of a ``.txt`` file (one per line) or ``.jsonl`` file (``field`` of each object).

    Blank lines of a ``.jsonl`` file are skipped; errors name the file and line.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix.startswith(".jsonl") or suffix.startswith(".json"):
        texts: list[str] = []
        for n, obj in iter_jsonl(path):
            if field not in obj:
                raise ValueError(f"{path}:{n}: expected an object with a {field!r} field")
            if not isinstance(obj[field], str):
                raise ValueError(f"{path}:{n}: field {field!r} is {type(obj[field]).__name__}, expected a string")
            texts.append(obj[field])
        return texts
    if suffix.startswith(".txt"):
        return [line for _, line in iter_lines(path)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raise ValueError(f"{path}: unsupported input type {suffix!r} (expected .txt or .jsonl)")


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8"}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz(out: M3Output, path: str | Path) -> None:
    """Arrays: ``dense [N,H]``; ``sparse_indptr/_indices/_data`` (CSR, N × vocab, ``sparse_shape``);
    ``colbert_data [T,D]`` + ``colbert_offsets [N+1]``; ``n_tokens [N]``."""
    arrays: dict[str, np.ndarray] = {}
    if out.n_tokens is not None:
        arrays["n_tokens"] = out.n_tokens
    if out.dense is not None:
        arrays["dense"] = out.dense
    if out.lexical is not None:
        csr = out.lexical.to_csr()
        arrays.update(sparse_indptr=csr.indptr, sparse_indices=csr.indices, sparse_data=csr.data,
                      sparse_shape=np.array(csr.shape))
    if out.colbert is not None:
        arrays.update(colbert_data=out.colbert.data, colbert_offsets=out.colbert.offsets)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def write_jsonl(out: M3Output, path: str | Path, *, colbert_encoding: str = "base64-float16") -> None:
    """One object per text: ``dense`` (list), ``lexical_weights`` ({id: w}), ``colbert``.

    ColBERT matrices are ``{"shape", "dtype", "data"}`` with base64 little-endian data
    (``float16`` or ``float32``) — a list of lists would be ~10× larger.
    """
    if colbert_encoding not in ("base64-float16", "base64-float32"):
        raise ValueError(f"colbert_encoding {colbert_encoding!r}: expected base64-float16 or base64-float32")
    dtype = np.dtype("<f2") if colbert_encoding.endswith("16") else np.dtype("<f4")
    lex = out.lexical.to_dicts() if out.lexical is not None else None
    with atomic_write(path, "w") as f:
        for i in range(len(out)):
            row: dict[str, object] = {"index": i}
            if out.dense is not None:
                row["dense"] = out.dense[i].tolist()
            if lex is not None:
                row["lexical_weights"] = lex[i]
            if out.colbert is not None:
                m = out.colbert[i]
                row["colbert"] = {"shape": list(m.shape), "dtype": dtype.name,
                                  "data": base64.b64encode(m.astype(dtype).tobytes()).decode("ascii")}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
