"""Multi-vector codecs on real data: bytes per passage and the nDCG@10 each costs against fp32.

Encodes a BEIR dataset's corpus and queries once with a real model (default ``m3embed-small``;
encodings are cached under ``--cache``), then builds one index per token-vector codec from the same
encodings and runs the ColBERT-reading modes (``multivec``, ``all``) with every query. Reported per
codec: bytes of the multi-vector store per passage (and the fraction of fp32), nDCG@10 / R@100,
the change against fp32 in points, overlap@10 of the rankings with fp32's, and search seconds.
The residual codec is run at the default PLAID depth (``colbert_depth`` 64: candidates decompressed
after the centroid-only stage), at smaller depths (faster), and with every candidate decompressed,
to separate the loss of the first stage from the loss of the codec.

    python benchmarks/codec_quality.py                      # xquad_r/paragraph/en, m3embed-small
    python benchmarks/codec_quality.py --dataset ../shared/data/xquad_r/paragraph/all_languages
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from m3embed.eval.datasets import load_beir  # noqa: E402
from m3embed.eval.metrics import evaluate_run, hits_to_run  # noqa: E402
from m3embed.output import ColbertVectors, LexicalWeights, M3Output  # noqa: E402

CODECS = {  # label → (codec, index options, search options)
    "fp32": ("fp32", {}, {}),
    "fp16": ("fp16", {}, {}),
    "int8": ("int8", {}, {}),
    "residual-4bit": ("residual", {"nbits": 4}, {}),
    "residual-4bit-exact": ("residual", {"nbits": 4}, {"colbert_depth": 100_000}),
    "residual-2bit": ("residual", {"nbits": 2}, {}),
    "residual-2bit-depth32": ("residual", {"nbits": 2}, {"colbert_depth": 32}),
    "residual-2bit-depth16": ("residual", {"nbits": 2}, {"colbert_depth": 16}),
    "residual-2bit-exact": ("residual", {"nbits": 2}, {"colbert_depth": 100_000}),
}


# Not backend_parity.py's cache: that one keeps ColBERT vectors in float16, and here the fp32 codec is
# the reference every other codec is measured against, so the vectors are cached in float32.
def save_output(path: Path, out: M3Output) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, dense=out.dense, indptr=out.lexical.indptr, ids=out.lexical.ids, weights=out.lexical.weights,
             vocab=np.int64(out.lexical.vocab_size), cdata=out.colbert.data, coffsets=out.colbert.offsets)
    tmp.replace(path)


def load_output(path: Path) -> M3Output:
    z = np.load(path)
    return M3Output(dense=z["dense"], lexical=LexicalWeights(z["indptr"], z["ids"], z["weights"], int(z["vocab"])),
                    colbert=ColbertVectors(z["cdata"], z["coffsets"]))


def encoded(model, texts: list[str], path: Path, max_length: int) -> M3Output:
    if path.is_file():
        return load_output(path)
    out = model.encode(texts, batch_size=32, max_length=max_length, return_dense=True, return_sparse=True,
                       return_colbert=True)
    save_output(path, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(REPO.parent / "shared/data/xquad_r/paragraph/en"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="m3embed-small")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--modes", default="multivec,all")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("-k", type=int, default=100, help="documents per query (a ColBERT depth below k has no effect)")
    ap.add_argument("--cache", default=str(REPO / ".cache/codec_quality"))
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    from m3embed import M3Model
    from m3embed.index import M3Index

    ds = load_beir(args.dataset, args.split)
    qids = ds.query_ids
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{ds.name.replace('/', '_')}-{Path(args.model).name}-{args.max_length}"
    model = M3Model.from_pretrained(args.model)
    t = time.perf_counter()
    docs = encoded(model, [d.full_text for d in ds.corpus], cache / f"{stem}-corpus.npz", args.max_length)
    queries = encoded(model, [ds.queries[q] for q in qids], cache / f"{stem}-{args.split}-queries.npz",
                      args.max_length)
    print(f"{ds.name} ({args.split}): {len(ds.corpus)} docs, {len(qids)} queries, "
          f"{len(docs.colbert.data)} token vectors (dim {docs.colbert.data.shape[1]}); encodings "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    modes = args.modes.split(",")
    fp32_bytes = docs.colbert.data.shape[0] * docs.colbert.data.shape[1] * 4 / len(docs)
    results: dict = {"dataset": ds.name, "split": args.split, "model": args.model, "k": args.k, "queries": len(qids),
                     "docs": len(ds.corpus), "fp32_bytes_per_passage": fp32_bytes, "codecs": {}}
    base_runs: dict[str, dict] = {}
    for label in args.codecs.split(","):
        codec, opts, search_opts = CODECS[label]
        idx = M3Index.create(None, model, multivec=codec, store_text=False, **opts)
        t = time.perf_counter()
        idx.add([d.id for d in ds.corpus], docs)
        build_s = time.perf_counter() - t
        row: dict = {"bytes_per_passage": idx.multivec.nbytes() / len(docs), "build_s": build_s}
        row["fp32_fraction"] = row["bytes_per_passage"] / fp32_bytes
        for mode in modes:
            t = time.perf_counter()
            hits = idx.search(queries, k=args.k, mode=mode, **search_opts)
            secs = time.perf_counter() - t
            run = hits_to_run(qids, hits)
            m = evaluate_run(ds.qrels, run, ("nDCG@10", "R@100")).mean
            top10 = {q: [h.id for h in hh[:10]] for q, hh in zip(qids, hits, strict=True)}
            if label == "fp32":
                base_runs[mode] = top10
            base = base_runs.get(mode)
            overlap = (float(np.mean([len(set(top10[q]) & set(base[q])) / max(1, len(base[q])) for q in qids]))
                       if base else None)
            row[mode] = {"ndcg@10": m["nDCG@10"], "recall@100": m["R@100"], "overlap@10": overlap,
                         "search_s": secs}
        idx.close(discard=True)
        results["codecs"][label] = row
        print(f"  {label:20s} {row['bytes_per_passage']:10,.0f} B/passage ({row['fp32_fraction']:.4f} of fp32)  "
              + "  ".join(f"{mo}: nDCG@10 {row[mo]['ndcg@10']:.4f} R@100 {row[mo]['recall@100']:.4f} "
                          f"ov@10 {row[mo]['overlap@10'] if row[mo]['overlap@10'] is not None else 1:.3f} "
                          f"({row[mo]['search_s']:.1f} s)" for mo in modes), flush=True)
    base = results["codecs"].get("fp32")
    if base:
        print("\n| codec | bytes/passage | of fp32 | " + " | ".join(f"{m} nDCG@10 | Δ pt" for m in modes) + " |")
        print("|---|---:|---:|" + "---:|---:|" * len(modes))
        for label, row in results["codecs"].items():
            cells = [f"{row[m]['ndcg@10']:.4f} | {100 * (row[m]['ndcg@10'] - base[m]['ndcg@10']):+.2f}" for m in modes]
            print(f"| {label} | {row['bytes_per_passage']:,.0f} | 1/{1 / row['fp32_fraction']:.1f} | "
                  + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
