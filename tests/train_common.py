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


def write_tiny_train_set(root, name: str = "train.jsonl", rows: int = 10):
    """A tiny checkpoint in ``root/ckpt`` and ``rows`` training rows (1 positive, 4 negatives) → (root, ckpt)."""
    import json

    from helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(root / "ckpt")
    texts = word_texts(60, 3, 3, 14)
    with open(root / name, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"query": f"{texts[i][:20]} {i}", "pos": [texts[10 + i]],
                                "neg": texts[20 + 4 * i : 24 + 4 * i]}) + "\n")
    return root, ckpt


def tiny_config(root, ckpt, out: str, **kw):
    """A 2-step, batch-2, group-3 ``TrainConfig`` on ``write_tiny_train_set``'s data (overrides in ``kw``)."""
    from m3embed.train import TrainConfig

    args = dict(model=str(ckpt), train_data=[str(root / "train.jsonl")], output_dir=str(root / out), group_size=3,
                batch_size=2, max_steps=2, learning_rate=1e-4, progress=False, plot=False) | kw
    return TrainConfig(**args)
