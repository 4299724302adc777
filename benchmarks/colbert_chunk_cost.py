"""What splitting a long ColBERT matrix costs: exact MaxSim vs max over chunks vs the first chunk only.

Qdrant caps one multivector at 1,048,576 floats (1,024 vectors of 1,024 dims; 2,730 of m3embed-small's
384). ``QdrantStore`` splits longer matrices into chunks and scores candidates with the exact MaxSim
over the whole matrix (client-side), so it loses nothing; this script measures what the shortcuts
would lose on a long-document set (default ``covidqa_longdoc``, documents encoded up to ``--max-length``
tokens with m3embed-small, cached under ``.cache/backends/``):

* ``exact`` — MaxSim over the whole matrix (``M3Index``, ``QdrantStore``);
* ``max over chunks`` — ``max_c MaxSim(q, chunk_c)`` (chunk points searched by the engine, best chunk wins);
* ``first chunk`` — the matrix truncated to the cap (what a silent truncation gives).

The corpus is smaller than every candidate depth, so ``multivec`` ranks all documents by the ColBERT
score and ``all`` by ``(s_d + 0.3·s_s + s_c) / 2.3`` (exact dense and lexical scores).

    python benchmarks/colbert_chunk_cost.py                       # covidqa_longdoc, cap of Qdrant
    python benchmarks/colbert_chunk_cost.py --cap-floats 262144   # a smaller cap: more chunks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from backend_parity import CACHE, SHARED, _load, _save  # noqa: E402

from m3embed.eval.datasets import load_beir  # noqa: E402
from m3embed.eval.metrics import evaluate_run  # noqa: E402
from m3embed.scoring import PAPER_WEIGHTS, dense_scores, lexical_scores, maxsim_packed  # noqa: E402


def encode(name: str, ds, max_length: int, batch_size: int):
    path = CACHE / f"enc-{name.replace('/', '_')}-m3embed-small-{max_length}.npz"
    if path.is_file():
        with np.load(path) as z:
            fp = json.loads(str(z["fingerprint"]))
            return _load(z, "d_", fp["vocab_size"]), _load(z, "q_", fp["vocab_size"])
    from m3embed import M3Model
    from m3embed.index import model_fingerprint

    model = M3Model.from_pretrained("m3embed-small")
    t = time.perf_counter()
    docs = model.encode([d.full_text for d in ds.corpus], batch_size=batch_size, max_length=max_length,
                        return_dense=True, return_sparse=True, return_colbert=True)
    print(f"encoded {len(ds.corpus)} documents in {time.perf_counter() - t:.0f} s", flush=True)
    qs = model.encode([ds.queries[q] for q in ds.query_ids], batch_size=32, max_length=512, return_dense=True,
                      return_sparse=True, return_colbert=True)
    arrays = {"fingerprint": json.dumps(model_fingerprint(model))}
    _save(path, "d_", docs, arrays)
    _save(path, "q_", qs, arrays)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return encode(name, ds, max_length, batch_size)


def colbert_matrix(qs, docs, rows_cap: int, how: str) -> np.ndarray:
    """``[Nq, Nd]`` ColBERT scores: exact, best chunk, or first chunk only."""
    out = np.zeros((len(qs), len(docs)), np.float32)
    mats = list(docs.colbert)
    for j, m in enumerate(mats):
        parts = [m[s : s + rows_cap] for s in range(0, max(len(m), 1), rows_cap)] if how != "exact" else [m]
        if how == "first chunk":
            parts = parts[:1]
        for i in range(len(qs)):
            q = qs.colbert[i]
            best = max(float(maxsim_packed(q, p, np.array([0, len(p)]))[0]) for p in parts)
            out[i, j] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="covidqa_longdoc")
    ap.add_argument("--max-length", type=int, default=8192)
    ap.add_argument("--cap-floats", type=int, default=1_048_576)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--json", default=str(CACHE / "colbert_chunk_cost.json"))
    args = ap.parse_args()
    ds = load_beir(SHARED / "data" / args.dataset, "test")
    docs, qs = encode(args.dataset, ds, args.max_length, args.batch_size)
    rows_cap = args.cap_floats // docs.colbert.data.shape[1]
    lengths = docs.colbert.lengths
    chunked = int((lengths > rows_cap).sum())
    print(f"{len(ds.corpus)} documents, token vectors per document: median {np.median(lengths):.0f}, max "
          f"{lengths.max()}; cap {rows_cap} rows → {chunked} documents split", flush=True)
    d = dense_scores(qs.dense, docs.dense)
    s = lexical_scores(qs.lexical, docs.lexical)
    wd, ws, wc = PAPER_WEIGHTS
    ids = [x.id for x in ds.corpus]
    qids = ds.query_ids
    report = {"dataset": args.dataset, "docs": len(ids), "queries": len(qids), "cap_rows": rows_cap,
              "split_docs": chunked, "median_tokens": float(np.median(lengths)), "rows": []}
    for how in ("exact", "max over chunks", "first chunk"):
        c = colbert_matrix(qs, docs, rows_cap, how)
        for mode, sc in (("multivec", c), ("all", (wd * d + ws * s + wc * c) / (wd + ws + wc))):
            run = {q: {ids[j]: float(sc[i, j]) for j in np.argsort(-sc[i], kind="stable")[:100]}
                   for i, q in enumerate(qids)}
            m = evaluate_run(ds.qrels, run, ("nDCG@10",)).mean["nDCG@10"]
            report["rows"].append({"colbert": how, "mode": mode, "ndcg10": m})
            print(json.dumps(report["rows"][-1]), flush=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print("| ColBERT score | multivec nDCG@10 | all nDCG@10 |\n|---|---|---|")
    for how in ("exact", "max over chunks", "first chunk"):
        r = {x["mode"]: x["ndcg10"] for x in report["rows"] if x["colbert"] == how}
        print(f"| {how} | {r['multivec']:.4f} | {r['all']:.4f} |")


if __name__ == "__main__":
    main()
