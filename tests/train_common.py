"""Shared bits of the training tests: single-threaded torch and small word texts."""

from __future__ import annotations

import pytest
import torch

WORDS = ("river", "stone", "apple", "green", "quantum", "seven", "market", "window", "north", "silver", "bread",
         "music", "garden", "planet", "copper", "winter")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread, and far faster on a busy 2-core machine (no OpenMP waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def word_texts(n: int, seed: int, lo: int, hi: int) -> list[str]:
    """``n`` seeded texts of ``lo``…``hi - 1`` words."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(lo, hi, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g)))
    return out
