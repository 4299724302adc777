"""Build the parity golden files in ``tests/golden/`` from FlagEmbedding's ``BGEM3FlagModel``.

Run it in the *reference* environment, not the project's:

    REFPY scripts/make_golden.py [--shared DIR] [--out tests/golden]

Requirements (checked at start, the script stops with a message otherwise):
FlagEmbedding==1.4.2, transformers>=4.56,<5 (FlagEmbedding 1.4.2 cannot be imported under
transformers 5, and below 4.56 its ``dtype=`` load kwarg is unknown), datasets<4, torch (CPU is
enough), numpy. ``m3embed`` itself is not installed there: only ``m3embed.testing`` is used
(imported from ``src/`` beside this script) to build the seeded random checkpoints, which are
bit-identical on any torch / transformers version.

For every checkpoint shape in ``SHAPES`` and every max length it stores, from the reference:
token ids (its tokenizer, ``truncation=True``), dense vectors, lexical weights (str id -> float),
ColBERT vectors, ``compute_lexical_matching_score`` over all texts, ``colbert_score`` of each pair,
and ``compute_score`` of the pairs at several batch sizes, with default and non-default weights.
The batch-size-1 scores are exact per pair; the batched ones carry the reference's ColBERT
padding clamp (M3-REFERENCE §3), and the script asserts that the clamp really changes at least
one score in every case, so the parity tests exercise it.

Outputs: ``golden.json`` (metadata, token ids, lexical weights, scores) and ``golden.npz``
(dense and ColBERT arrays, compressed). Texts and pairs are read from ``texts.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Checkpoint shapes: ``build_random_checkpoint`` kwargs + the max lengths tested on each.
SHAPES = {
    "l2h32": {"build": {"layers": 2, "hidden": 32, "heads": 4, "ffn": 64, "max_positions": 514,
                        "colbert_dim": -1, "seed": 0}, "max_lengths": [64, 512]},
    "l3h48c16": {"build": {"layers": 3, "hidden": 48, "heads": 4, "ffn": 96, "max_positions": 1026,
                           "colbert_dim": 16, "seed": 3}, "max_lengths": [64, 512]},
    "l2h16p8194": {"build": {"layers": 2, "hidden": 16, "heads": 2, "ffn": 32, "max_positions": 8194,
                             "colbert_dim": -1, "seed": 2}, "max_lengths": [64, 512, 2048]},
}
#: compute_score batch sizes run on the reference; 1 is exact, the others clamp (§3).
REF_BATCH_SIZES = [1, 4, 256]
#: non-default [dense, sparse, colbert] weights (the upstream README's)
WEIGHTS = [0.4, 0.2, 0.4]
SCORE_KEYS = ["colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"]


def _fail(msg: str) -> None:
    sys.exit(f"make_golden.py: {msg}\nRun it with the reference venv: FlagEmbedding==1.4.2, "
             "transformers>=4.56,<5, datasets<4 (e.g. REFPY scripts/make_golden.py)")


def check_versions() -> dict[str, str]:
    from packaging.version import Version

    def ver(name: str) -> Version | None:
        try:
            return Version(md.version(name))
        except md.PackageNotFoundError:
            return None

    fe, tf, ds = ver("FlagEmbedding"), ver("transformers"), ver("datasets")
    if fe != Version("1.4.2"):
        _fail(f"FlagEmbedding 1.4.2 is required, found {fe}")
    if tf is None or not (Version("4.56") <= tf < Version("5")):
        _fail(f"transformers >=4.56,<5 is required, found {tf}")
    if ds is not None and ds >= Version("4"):
        _fail(f"datasets <4 is required, found {ds}")
    return {name: md.version(name) for name in ("FlagEmbedding", "transformers", "torch", "numpy",
                                                 "tokenizers", "datasets")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("M3EMBED_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "golden")
    args = ap.parse_args()
    versions = check_versions()

    import numpy as np
    import torch
    from FlagEmbedding import BGEM3FlagModel

    sys.path.insert(0, str(ROOT / "src"))
    from m3embed.testing import build_random_checkpoint

    torch.manual_seed(0)
    tok_dir = args.shared / "reference" / "xlmr-tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        _fail(f"no tokenizer at {tok_dir} (pass --shared or set M3EMBED_SHARED)")
    data = json.loads((args.out / "texts.json").read_text(encoding="utf-8"))
    texts: list[str] = data["texts"]
    pairs: list[list[str]] = data["pairs"]

    golden: dict = {
        "versions": versions,
        "tokenizer_sha256": hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest(),
        "reference_call": "BGEM3FlagModel(ckpt, use_fp16=False, devices='cpu'); encode(batch_size=256); "
                          "compute_score(max_query_length=L, max_passage_length=L)",
        "shapes": SHAPES,
        "ref_batch_sizes": REF_BATCH_SIZES,
        "weights": WEIGHTS,
        "token_ids": {},
        "cases": {},
    }
    arrays: dict[str, np.ndarray] = {}

    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in SHAPES.items():
            ckpt = build_random_checkpoint(Path(tmp) / name, tok_dir, **spec["build"])
            model = BGEM3FlagModel(str(ckpt), use_fp16=False, devices="cpu",
                                   colbert_dim=spec["build"]["colbert_dim"])
            for max_len in spec["max_lengths"]:
                case = f"{name}/{max_len}"
                ids = model.tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
                prev = golden["token_ids"].setdefault(str(max_len), ids)
                assert prev == ids, "token ids must not depend on the checkpoint"

                out = model.encode(texts, batch_size=256, max_length=max_len, return_dense=True,
                                   return_sparse=True, return_colbert_vecs=True)
                dense = np.asarray(out["dense_vecs"], dtype=np.float32)
                colbert = [np.asarray(c, dtype=np.float32) for c in out["colbert_vecs"]]
                assert [len(c) for c in colbert] == [len(x) - 1 for x in ids]
                lexical = [{k: float(v) for k, v in lw.items()} for lw in out["lexical_weights"]]
                lex_matrix = model.compute_lexical_matching_score(out["lexical_weights"], out["lexical_weights"])

                # the reference's per-pair MaxSim, from its own encode outputs
                q_out = model.encode([p[0] for p in pairs], max_length=max_len, return_dense=False,
                                     return_colbert_vecs=True)["colbert_vecs"]
                p_out = model.encode([p[1] for p in pairs], max_length=max_len, return_dense=False,
                                     return_colbert_vecs=True)["colbert_vecs"]
                colbert_pair = [float(model.colbert_score(q, p)) for q, p in zip(q_out, p_out, strict=True)]

                scores: dict[str, dict] = {}
                for bs in REF_BATCH_SIZES:
                    for wname, w in (("default", None), ("weighted", WEIGHTS)):
                        s = model.compute_score(pairs, batch_size=bs, max_query_length=max_len,
                                                max_passage_length=max_len, weights_for_different_modes=w)
                        scores[f"{wname}/bs{bs}"] = {k: [float(x) for x in s[k]] for k in SCORE_KEYS}

                exact = scores["default/bs1"]["colbert"]
                np.testing.assert_allclose(colbert_pair, exact, atol=1e-5)
                clamp_diffs = {}
                for bs in REF_BATCH_SIZES[1:]:
                    d = np.abs(np.array(scores[f"default/bs{bs}"]["colbert"]) - np.array(exact))
                    clamp_diffs[bs] = float(d.max())
                    # the clamp must be visible in the golden data, or the parity tests prove nothing
                    assert d.max() > 1e-4, f"{case}: batch_size={bs} does not trigger the colbert clamp"
                    assert np.all(np.array(scores[f"default/bs{bs}"]["colbert"]) >= np.array(exact) - 1e-6)

                key = f"{name}__{max_len}"
                arrays[f"{key}__dense"] = dense
                arrays[f"{key}__colbert"] = (np.concatenate(colbert) if colbert
                                             else np.zeros((0, 1), np.float32))
                arrays[f"{key}__colbert_offsets"] = np.cumsum([0] + [len(c) for c in colbert]).astype(np.int64)
                arrays[f"{key}__lexical_matching"] = np.asarray(lex_matrix, dtype=np.float32)
                golden["cases"][case] = {
                    "shape": name,
                    "max_length": max_len,
                    "lexical_weights": lexical,
                    "colbert_score": colbert_pair,
                    "scores": scores,
                    "clamp_max_diff": {str(k): v for k, v in clamp_diffs.items()},
                }
                n_clamped = int(np.sum(np.abs(np.array(scores["default/bs256"]["colbert"])
                                              - np.array(exact)) > 1e-6))
                print(f"{case}: dense {dense.shape}, colbert rows {sum(len(c) for c in colbert)}, "
                      f"clamp max diff {clamp_diffs}, pairs changed at bs256: {n_clamped}/{len(pairs)}")
            del model

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, separators=(",", ":")),
                                          encoding="utf-8")
    np.savez_compressed(args.out / "golden.npz", **arrays)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"wrote {args.out}/golden.json and golden.npz; golden dir {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
