"""The embedded backend: :class:`~m3embed.index.M3Index` behind the ``VectorStore`` interface.

Adds upsert (an id already present is deleted, then added) and commits every ``add`` / ``delete``
(``M3Index.save``: a new generation, atomic), so an interrupted ingest keeps every batch it finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..index.core import M3Index, SearchHit
from ..output import M3Output
from .base import check_encoded, check_fingerprint, check_ids, resolve_fingerprint

if TYPE_CHECKING:
    from ..model import M3Model


class LocalStore:
    """An ``M3Index`` directory as a vector store (``open_store("local", path=…, model=…)``)."""

    backend = "local"
    engine_modes = frozenset({"dense", "sparse", "multivec", "dense+sparse", "all", "rrf"})

    def __init__(self, index: M3Index, *, model: M3Model | None = None, autosave: bool = True,
                 id_max_bytes: int = 1024) -> None:
        self.index = index
        self.id_max_bytes = id_max_bytes
        self.model = model
        self.autosave = autosave
        self.where = f"local index {index.root}"

    @classmethod
    def open(cls, path: str | Path, model: M3Model | Mapping[str, Any] | None = None, *, check_model: bool = True,
             autosave: bool = True, id_max_bytes: int = 1024, **index_options: Any) -> LocalStore:
        """Open the index at ``path`` (writable), or create it there with ``model``'s fingerprint and
        ``index_options`` (those of ``M3Index.create``) when the directory holds no index. Ids longer
        than ``id_max_bytes`` (UTF-8) are refused, as the database backends do."""
        root = Path(path)
        the_model = None if model is None or isinstance(model, Mapping) else model
        if (root / "manifest.json").is_file():
            idx = M3Index.open(root, writable=True)
            if model is not None:
                check_fingerprint(idx.fingerprint, resolve_fingerprint(model), strict=check_model,
                                  where=f"local index {root}")
            idx.model = the_model
        else:
            if model is None:
                raise ValueError(f"{root}: no index there; pass model=… (an M3Model or a fingerprint dict) "
                                 "to create one")
            idx = M3Index.create(root, model, **index_options)
            idx.save()  # an empty generation: re-opening finds the index and its fingerprint
        return cls(idx, model=the_model, autosave=autosave, id_max_bytes=id_max_bytes)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.index.fingerprint

    @property
    def has_colbert(self) -> bool:
        return self.index.multivec is not None

    def add(self, ids: Sequence[str], encoded: M3Output, texts: Sequence[str | None] | None = None,
            metadata: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        ids = check_ids(ids, max_bytes=self.id_max_bytes)  # the limit of the database backends, for portability
        check_encoded(encoded, len(ids), self.fingerprint, colbert=self.has_colbert)  # before deleting anything
        present = [d for d in ids if d in self.index]
        if present:
            self.index.delete(present)
        try:
            self.index.add(ids, encoded, texts=texts, metadata=metadata)
        except BaseException:
            if present:  # undo the delete: the failed add changed nothing else
                self.index._reload_after_failed_save()
            raise
        if self.autosave:
            self.index.save()

    def delete(self, ids: Sequence[str]) -> int:
        ids = [ids] if isinstance(ids, str) else list(dict.fromkeys(ids))
        present = [d for d in ids if d in self.index]
        if present:
            self.index.delete(present)
            if self.autosave:
                self.index.save()
        return len(present)

    def count(self) -> int:
        return len(self.index)

    def existing(self, ids: Sequence[str]) -> set[str]:
        return {d for d in ids if d in self.index}

    def flush(self) -> None:
        self.index.save()

    def search(self, queries: Sequence[str] | str | M3Output, k: int = 10, mode: str = "all", *,
               model: M3Model | None = None, fusion: str = "auto", with_payload: bool = True,
               **options: Any) -> list[list[SearchHit]]:
        """``M3Index.search`` (``fusion`` is accepted for interface parity: the index fuses every mode itself)."""
        if fusion not in ("auto", "engine", "client"):
            raise ValueError(f"fusion {fusion!r}: expected one of ('auto', 'engine', 'client')")
        hits = self.index.search(queries, k=k, mode=mode, model=model or self.model, **options)
        if not with_payload:
            for per in hits:
                for h in per:
                    h.text = h.metadata = None
        return hits

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalStore({self.index!r})"
