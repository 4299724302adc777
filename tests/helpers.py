"""Shared helpers for tests: where ../shared is, and tiny random checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from m3embed.testing import build_random_checkpoint

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The ``shared`` folder beside the repository (override with ``M3EMBED_SHARED``)."""
    return Path(os.environ.get("M3EMBED_SHARED", REPO.parent / "shared"))


def tokenizer_dir() -> Path:
    return shared_dir() / "reference" / "xlmr-tokenizer"


def tiny_checkpoint(directory: Path, **kwargs) -> Path:
    """A seeded random bge-m3-layout checkpoint (defaults: 2 layers, hidden 32, 514 positions)."""
    return build_random_checkpoint(directory, tokenizer_dir(), **kwargs)
