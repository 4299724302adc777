"""Shared fixtures: the parity golden data and the golden checkpoints (see ``test_parity.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import tokenizer_dir

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="session")
def xlmr_tokenizer_dir() -> Path:
    """``shared/reference/xlmr-tokenizer`` (``shared`` beside the repo root, or ``$M3EMBED_SHARED``)."""
    path = tokenizer_dir()
    if not (path / "tokenizer.json").is_file():
        pytest.fail(f"no XLM-R tokenizer.json under {path}: set M3EMBED_SHARED to the shared folder")
    return path


@pytest.fixture(scope="session")
def parity_golden() -> dict:
    """``golden.json`` (metadata, token ids, lexical weights, scores) + ``golden.npz`` arrays + texts.

    Written by ``scripts/make_golden.py`` from FlagEmbedding 1.4.2.
    """
    data = json.loads((GOLDEN_DIR / "golden.json").read_text(encoding="utf-8"))
    texts = json.loads((GOLDEN_DIR / "texts.json").read_text(encoding="utf-8"))
    with np.load(GOLDEN_DIR / "golden.npz") as npz:
        data["arrays"] = {k: npz[k] for k in npz.files}
    data["texts"] = texts["texts"]
    data["pairs"] = [tuple(p) for p in texts["pairs"]]
    return data


@pytest.fixture(scope="session")
def parity_model(
    parity_golden: dict, xlmr_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], object]:
    """``parity_model(shape)`` → ``M3Model`` of the golden checkpoint ``shape``, built once per session.

    The checkpoint is rebuilt from the build args recorded in ``golden.json``; the seeded builder
    gives the same weights as the reference run on any torch / transformers version.
    """
    from m3embed import M3Model
    from m3embed.testing import build_random_checkpoint

    cache: dict[str, object] = {}

    def get(shape: str) -> object:
        if shape not in cache:
            build = parity_golden["shapes"][shape]["build"]
            path = build_random_checkpoint(tmp_path_factory.mktemp(f"ckpt-{shape}"), xlmr_tokenizer_dir, **build)
            cache[shape] = M3Model.from_pretrained(path)
        return cache[shape]

    return get
