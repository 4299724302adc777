"""On-disk layout of an index: generations, manifest, checksums, atomic commits and the writer lock.

Layout of an index directory ``ROOT``::

    ROOT/manifest.json       format version, model fingerprint, options, the current generation and
                             every file of it with its size and sha256
    ROOT/gen-000007/         the files of generation 7 (immutable once committed)
    ROOT/write.lock          flock'ed by the one writer
    ROOT/.staging-*/         a generation being written (removed when a writer opens the index)

A commit writes every file of the new generation into a staging directory (unchanged files are
hard links to the previous generation's), fsyncs them, renames the directory to ``gen-N`` and
then replaces ``manifest.json`` atomically. Until that last rename the previous manifest, and so
the previous generation, stays the one that is opened: a crash at any point leaves it intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write

FORMAT = "m3embed-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK_FILE = "write.lock"
_GEN_RE = re.compile(r"^gen-(\d{6})$")


class IndexCorruptError(ValueError):
    """An index directory that cannot be opened: missing, truncated or altered files, bad manifest."""


class IndexLockedError(RuntimeError):
    """Another writer holds the index's lock."""


def gen_name(generation: int) -> str:
    return f"gen-{generation:06d}"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- lock
class WriterLock:
    """An exclusive, non-blocking ``flock`` on ``ROOT/write.lock``, released by :meth:`release`.

    flock locks belong to an open file description, so a second writer fails even inside the
    same process; the kernel drops the lock when the holder dies (no stale locks after a crash).
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_small(self._fd)
            os.close(self._fd)
            self._fd = None
            raise IndexLockedError(
                f"{root}: index is locked by another writer ({holder or 'unknown holder'}); "
                "open it read-only or wait for the other writer to close it"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()}".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:  # pragma: no cover - best effort
        self.release()


def _read_small(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------- manifest
def read_manifest(root: Path) -> dict[str, Any]:
    """Parse and check ``ROOT/manifest.json`` (format name and version, required keys)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such index directory")
    if not path.is_file():
        raise IndexCorruptError(f"{root}: not an m3embed index (no {MANIFEST})")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexCorruptError(f"{path}: manifest is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexCorruptError(f"{path}: not an m3embed index manifest (format {m.get('format')!r})"
                                if isinstance(m, dict) else f"{path}: manifest is not a JSON object")
    if m.get("format_version") != FORMAT_VERSION:
        raise IndexCorruptError(f"{path}: format version {m.get('format_version')!r}; this m3embed reads "
                                f"version {FORMAT_VERSION}")
    for key in ("generation", "files", "model", "options", "count"):
        if key not in m:
            raise IndexCorruptError(f"{path}: manifest lacks {key!r}")
    return m


def check_files(root: Path, manifest: dict[str, Any], *, checksums: bool = True) -> Path:
    """Check that every file of the manifest's generation exists with its size (and sha256).

    Returns the generation directory; raises :class:`IndexCorruptError` naming the first bad file.
    """
    gen_dir = Path(root) / gen_name(int(manifest["generation"]))
    if not gen_dir.is_dir():
        raise IndexCorruptError(f"{gen_dir}: generation directory named by the manifest is missing")
    for name, entry in manifest["files"].items():
        f = gen_dir / name
        if not f.is_file():
            raise IndexCorruptError(f"{f}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size != entry["size"]:
            raise IndexCorruptError(f"{f}: {size} bytes, the manifest says {entry['size']} (truncated or altered)")
        if checksums and sha256_file(f) != entry["sha256"]:
            raise IndexCorruptError(f"{f}: sha256 does not match the manifest (the file was altered or damaged)")
    return gen_dir


def load_array(gen_dir: Path, name: str, *, mmap: bool = True) -> np.ndarray:
    """``np.load`` one ``.npy`` file (memory-mapped); format errors become :class:`IndexCorruptError`."""
    path = gen_dir / name
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexCorruptError(f"{path}: unreadable array ({e})") from None


# ---------------------------------------------------------------------------- writing a generation
class Staging:
    """A generation being written: files go into ``ROOT/.staging-<uuid>/`` and are recorded.

    Nothing here is visible to readers until :meth:`commit`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / f".staging-{uuid.uuid4().hex[:12]}"
        self.dir.mkdir()
        self.files: dict[str, dict[str, Any]] = {}

    def write_array(self, name: str, arr: np.ndarray) -> Path:
        path = self.dir / name
        path.unlink(missing_ok=True)  # never write through a hard link into a committed generation
        with open(path, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        self._record(name, path)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.unlink(missing_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._record(name, path)
        return path

    def link(self, name: str, src: Path, entry: dict[str, Any]) -> None:
        """Reuse an unchanged file of a committed generation (hard link; copy where links fail)."""
        dst = self.dir / name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        self.files[name] = dict(entry)

    def has(self, name: str) -> bool:
        return name in self.files

    def _record(self, name: str, path: Path) -> None:
        self.files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}

    def commit(self, manifest: dict[str, Any], keep: set[str] | None = None) -> int:
        """Make this the current generation; returns its number. ``keep``: file names to keep (default all)."""
        for name in list(self.files):
            if keep is not None and name not in keep:
                (self.dir / name).unlink(missing_ok=True)
                del self.files[name]
        for f in self.dir.iterdir():  # a file written but never recorded is not part of the generation
            if f.name not in self.files:
                f.unlink()
        generation = next_generation(self.root)
        gen_dir = self.root / gen_name(generation)
        fsync_dir(self.dir)
        os.rename(self.dir, gen_dir)
        fsync_dir(self.root)
        body = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, generation=generation,
                    files=dict(sorted(self.files.items())))
        with atomic_write(self.root / MANIFEST, "w") as f:
            json.dump(body, f, indent=1, sort_keys=True)
        fsync_dir(self.root)
        remove_old_generations(self.root, generation)
        return generation

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def next_generation(root: Path) -> int:
    nums = [int(m.group(1)) for p in Path(root).iterdir() if (m := _GEN_RE.match(p.name))]
    return max(nums, default=0) + 1


def remove_old_generations(root: Path, current: int) -> None:
    """Delete every ``gen-*`` but ``current`` (readers that mapped them keep their open files)."""
    for p in Path(root).iterdir():
        m = _GEN_RE.match(p.name)
        if m and int(m.group(1)) != current:
            shutil.rmtree(p, ignore_errors=True)


def remove_stale_staging(root: Path) -> None:
    """Remove staging directories a crashed writer left behind (call with the lock held)."""
    for p in Path(root).glob(".staging-*"):
        shutil.rmtree(p, ignore_errors=True)
