"""What fitting the residual codebook on the first chunk costs at 100k, against a corpus-wide sample.

Needs the index and corpus of ``real_scale_bench.py --codec-sample 0`` (100k passages whose first
2,048 are mostly Chinese, because ``train_mix`` is sorted by source). For every ``--stride``-th
xquad_r/en test query: the dense top-``--depth`` of that index, re-ranked by ColBERT MaxSim with

* exact token vectors (the candidates re-encoded, same precision and truncation as the index),
* the index's residual 2-bit vectors (codebook fitted on the first chunk),
* residual 2-bit vectors from a codebook fitted on ``--sample`` passages drawn from the whole
  corpus (what ``M3Index.build`` now does by default),

and nDCG@10 of each ranking, plus the token vectors' mean cosine to the exact ones.

    python benchmarks/codebook_sample.py --index .cache/real_scale/index-en-100000-160-bf16-cs0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, default=REPO / ".cache" / "real_scale" / "corpus-en-100000.jsonl")
    ap.add_argument("--stride", type=int, default=30, help="every stride-th judged query")
    ap.add_argument("--depth", type=int, default=200)
    ap.add_argument("--sample", type=int, default=1024)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from m3embed import M3Model
    from m3embed.eval.datasets import load_beir
    from m3embed.eval.metrics import evaluate_run
    from m3embed.index import M3Index
    from m3embed.index.multivec import MultiVecStore

    torch.set_num_threads(args.threads)
    idx = M3Index.open(args.index, verify=False)
    with open(args.corpus, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    model = M3Model.from_pretrained("m3embed-small", precision=args.precision)
    ds = load_beir(DATA / "xquad_r" / "paragraph" / "en", "test")
    qids = ds.query_ids[:: args.stride]
    q = model.encode([ds.queries[i] for i in qids], max_length=512, return_dense=True, return_sparse=False,
                     return_colbert=True)
    _, cand = idx.dense._index().search(np.ascontiguousarray(q.dense, dtype=np.float32), args.depth)
    cands = np.unique(cand)

    def colbert(texts):
        return model.encode(texts, max_length=args.max_length, batch_size=64, return_dense=False,
                            return_sparse=False, return_colbert=True).colbert

    exact = colbert([rows[i]["text"] for i in cands])
    picks = np.sort(np.random.default_rng(0).choice(len(rows), args.sample, replace=False))
    store = MultiVecStore(idx.multivec.dim, dict(idx.multivec.opts))
    store.fit(np.asarray(colbert([rows[i]["text"] for i in picks]).data))
    store.attach(store.encode(exact, 0, 0))
    variants = {"exact": exact, "first-chunk codebook (index)": idx.multivec.get(cands),
                f"corpus-sample codebook ({args.sample} docs)": store.get(np.arange(len(cands)))}
    pos = {int(r): j for j, r in enumerate(cands)}
    qr = {k: ds.qrels[k] for k in qids}
    print(f"{len(qids)} queries, {len(cands):,} distinct candidates (dense top-{args.depth} of {idx.n_rows:,})")
    for name, cv in variants.items():
        run, cos = {}, []
        for qi, qid in enumerate(qids):
            qc = np.asarray(q.colbert[qi], dtype=np.float32)
            run[qid] = {}
            for r in cand[qi]:
                d = np.asarray(cv[pos[int(r)]], dtype=np.float32)
                run[qid][rows[r]["id"]] = float((qc @ d.T).max(1).sum())
        for j in range(0, len(cands), 10):
            a, b = np.asarray(exact[j], dtype=np.float32), np.asarray(cv[j], dtype=np.float32)
            cos.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
        ndcg = evaluate_run(qr, run, ("nDCG@10",)).mean["nDCG@10"]
        print(f"  {name:38s} nDCG@10 {ndcg:.4f}   token-vector cos to exact {np.concatenate(cos).mean():.4f}",
              flush=True)


if __name__ == "__main__":
    main()
