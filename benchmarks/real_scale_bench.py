"""Search at 100k real passages: does the fast configuration keep its quality on real vectors?

``search_bench.py`` measures latency on synthetic vectors, where HNSW's recall is poor because
uniform-noise neighbourhoods are near-ties. This benchmark answers the quality question with real
text and a real model:

* corpus — the ``xquad_r/paragraph/<lang>`` test corpus (the judged documents) plus real
  distractor passages up to ``--n`` (default 100,000): every distinct passage of
  ``train_mix/train_short_docs`` (74,483), then the long training documents cut into
  ``--chunk-words``-word pieces. Every document is truncated at ``--max-length`` tokens (160:
  ~150 ColBERT vectors per passage, the shape the issue names).
* model — ``m3embed-small`` (``--precision``, bf16 by default: encoding 100k passages takes
  ~30 min on 2 cores); the index is built once and kept under ``--workdir`` (reruns reuse it).
* index — residual 2-bit ColBERT store (memory-mapped; codebook fitted on ``--codec-sample``
  documents drawn from the whole corpus), float32 impacts, flat dense; an HNSW graph over the
  same dense vectors is swapped in for the approximate rows.
* queries — the set's test queries (1,190 for en), encoded at 512 tokens. nDCG@10 / R@100 on
  the judged queries with the eval harness's metrics, every mode, flat and HNSW, ``all`` at
  several ColBERT depths; latency p50 / p95 over ``--latency-queries`` single-query calls (query
  encoding excluded); nDCG@10 from k = 10 searches (what ``colbert_depth`` changes), R@100 from
  k = 100; HNSW recall@10 / @100 against flat dense; top-10 overlap of each ``all``
  configuration with flat ``all`` at the default depth. The same modes on the judged corpus
  alone (same truncation) give the small-corpus reference.

Distractors are training passages (the model saw them); they are not judged, so they can only
take rank from the relevant documents.

    python benchmarks/real_scale_bench.py --json .cache/real_scale/report-100k.json
    python benchmarks/real_scale_bench.py --n 20000 --workdir .cache/real_scale_20k   # quicker
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO.parent / "shared" / "data"


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def distractor_texts(chunk_words: int):
    """Every passage of train_short_docs (positives and negatives, file order), then the long
    training documents cut into ``chunk_words``-word pieces."""
    def groups(name: str):
        with gzip.open(DATA / "train_mix" / name, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                yield from r["pos"] + r["neg"]

    yield from groups("train_short_docs.jsonl.gz")
    for doc in groups("train_long_docs.jsonl.gz"):
        words = doc.split()
        for s in range(0, len(words), chunk_words):
            yield " ".join(words[s : s + chunk_words])


def write_corpus(path: Path, judged: list[dict], n: int, chunk_words: int) -> int:
    """``judged`` documents then distinct distractors up to ``n`` rows, as BEIR-style jsonl (atomic)."""
    seen = {d["text"] for d in judged}
    rows = list(judged)
    for text in distractor_texts(chunk_words):
        if len(rows) >= n:
            break
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            rows.append({"id": f"x{len(rows)}", "text": text})
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} distinct passages available, asked for --n {n}")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return len(rows)


def timed_search(idx, q_one, mode: str, n: int, **kw) -> tuple[float, float]:
    ts = []
    for i in range(n):
        t = time.perf_counter()
        idx.search(q_one[i], k=10, mode=mode, **kw)
        ts.append(time.perf_counter() - t)
    a = np.asarray(ts) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="documents in the large index (judged + distractors)")
    ap.add_argument("--lang", default="en", help="xquad_r/paragraph language whose test queries are judged")
    ap.add_argument("--max-length", type=int, default=160, help="passage truncation in tokens")
    ap.add_argument("--chunk-words", type=int, default=100, help="words per piece of a long training document")
    ap.add_argument("--precision", default="bf16", help="encoding precision of m3embed-small (fp32|bf16|int8)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--depths", default="64,32,16", help="ColBERT depths of the `all` rows")
    ap.add_argument("--modes", default="dense,sparse,multivec,dense+sparse,all", help="modes of the 100k rows")
    ap.add_argument("--efs", default="256,512", help="extra HNSW efSearch values (rows: dense, all)")
    ap.add_argument("--skip-judged", action="store_true", help="skip the judged-documents-only reference rows")
    ap.add_argument("--codec-sample", type=int, default=1024,
                    help="documents drawn from the whole corpus to fit the residual codebook (0: the first chunk)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=REPO / ".cache" / "real_scale")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import faiss
    import torch
    from search_bench import take

    from m3embed import M3Model
    from m3embed.eval.datasets import load_beir
    from m3embed.eval.metrics import evaluate_run, hits_to_run
    from m3embed.index import M3Index
    from m3embed.index.dense import DenseIndex

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    ds = load_beir(DATA / "xquad_r" / "paragraph" / args.lang, "test")
    judged = [d.as_index_record() for d in ds.corpus]
    qids = ds.query_ids
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"corpus-{args.lang}-{args.n}.jsonl"
    if not corpus.exists():
        write_corpus(corpus, judged, args.n, args.chunk_words)
    model = M3Model.from_pretrained("m3embed-small", precision=args.precision)
    opts = {"multivec": "residual", "nbits": 2, "store_text": False}
    report: dict = {"n": args.n, "lang": args.lang, "judged_docs": len(judged), "queries": len(qids),
                    "max_length": args.max_length, "precision": args.precision, "threads": args.threads,
                    "index_options": opts, "codec_sample": args.codec_sample}

    big = args.workdir / f"index-{args.lang}-{args.n}-{args.max_length}-{args.precision}-cs{args.codec_sample}"
    if (big / "manifest.json").exists():
        idx = M3Index.open(big, verify=False)
        print(f"reusing {big} ({idx.n_rows:,} rows)", flush=True)
    else:
        t = time.perf_counter()
        idx = M3Index.build(corpus, model, big, batch_size=args.batch_size, max_length=args.max_length,
                            codec_sample=args.codec_sample, **opts)
        report["build_s"] = time.perf_counter() - t
        print(f"built {idx.n_rows:,} documents in {report['build_s']:.0f} s (encoding included)", flush=True)
        idx.close()
        idx = M3Index.open(big, verify=False)
    idx.model = model
    small = M3Index.build(judged, model, None, batch_size=args.batch_size, max_length=args.max_length,
                          show_progress=False, codec_sample=args.codec_sample, **opts)
    small.model = model

    t = time.perf_counter()
    q = model.encode([ds.queries[i] for i in qids], batch_size=args.batch_size, max_length=512,
                     return_dense=True, return_sparse=True, return_colbert=True)
    report["query_encode_ms_per_query"] = (time.perf_counter() - t) / len(qids) * 1e3
    q_one = [take(q, i) for i in range(min(args.latency_queries, len(qids)))]
    nlat = len(q_one)

    def quality(index, mode: str, **kw) -> tuple[dict, list]:
        # nDCG@10 from a k = 10 search: with k = 100 the ColBERT stage decompresses at least 100
        # candidates, which would hide what a smaller colbert_depth costs at k = 10
        res = index.search(q, k=10, mode=mode, **kw)
        mean = evaluate_run(ds.qrels, hits_to_run(qids, res), ("nDCG@10",)).mean
        if "colbert_depth" not in kw:  # the depth only changes which candidates are decompressed
            res100 = index.search(q, k=100, mode=mode, **kw)
            mean.update(evaluate_run(ds.qrels, hits_to_run(qids, res100), ("R@100",)).mean)
        return mean, res

    rows: list[dict] = []
    flat_all = None

    def row(label: str, index, mode: str, **kw) -> list:
        nonlocal flat_all
        mean, res = quality(index, mode, **kw)
        p50, p95 = timed_search(index, q_one, mode, nlat, **kw) if index is not small else (float("nan"),) * 2
        top10 = [[h.id for h in r] for r in res]
        if flat_all is None and label == big_flat and mode == "all" and not kw:
            flat_all = top10
        overlap = (float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10, flat_all, strict=True)]))
                   if flat_all is not None and mode == "all" else float("nan"))
        r = {"index": label, "mode": mode + (f" depth {kw['colbert_depth']}" if "colbert_depth" in kw else ""),
             "nDCG@10": mean["nDCG@10"], "R@100": mean.get("R@100", float("nan")), "p50_ms": p50, "p95_ms": p95,
             "top10_overlap_vs_flat_all": overlap}
        rows.append(r)
        print(f"  {label:20s} {r['mode']:16s} nDCG@10 {r['nDCG@10']:.4f}  R@100 {r['R@100']:.4f}  "
              f"p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  overlap {overlap:.2f}", flush=True)
        return res

    depths = [int(x) for x in args.depths.split(",")]
    big_flat, big_hnsw = f"{idx.n_rows:,} flat", f"{idx.n_rows:,} hnsw"
    modes = [m for m in args.modes.split(",") if m]
    if not args.skip_judged:
        print(f"{len(judged)} judged documents alone (max length {args.max_length}):", flush=True)
        for mode in modes:
            row("judged only", small, mode)
    small.close(discard=True)
    print(f"{idx.n_rows:,} documents, flat dense:", flush=True)
    for mode in modes:
        row(big_flat, idx, mode)
    for d in depths[1:]:
        row(big_flat, idx, "all", colbert_depth=d)

    flat_dense = idx.dense
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(flat_dense.dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(flat_dense.vectors)
    report["hnsw_build_s"] = time.perf_counter() - t
    qd = np.ascontiguousarray(q.dense, dtype=np.float32)
    _, exact = flat_dense._index().search(qd, 100)
    hnsw.hnsw.efSearch = args.ef_search
    _, approx = hnsw.search(qd, 100)
    for kk in (10, 100):
        report[f"hnsw_recall@{kk}"] = float(np.mean([len(set(a[:kk]) & set(b[:kk])) / kk
                                                    for a, b in zip(approx, exact, strict=True)]))
    print(f"HNSW (M 32, efConstruction {args.ef_construction}, efSearch {args.ef_search}) built in "
          f"{report['hnsw_build_s']:.0f} s: recall vs flat @10 {report['hnsw_recall@10']:.4f} "
          f"@100 {report['hnsw_recall@100']:.4f}", flush=True)
    idx.dense = DenseIndex(flat_dense.dim, {"kind": "hnsw", "ef_search": args.ef_search}, flat_dense.vectors, hnsw)
    for mode in (m for m in modes if m != "sparse"):
        row(big_hnsw, idx, mode)
    for d in depths[1:]:
        row(big_hnsw, idx, "all", colbert_depth=d)
    # a wider beam: `all` asks HNSW for 200 dense candidates, `multivec` for 200, dense+sparse for 1000
    for ef in (int(e) for e in args.efs.split(",") if e and int(e) > args.ef_search):
        hnsw.hnsw.efSearch = ef
        _, approx = hnsw.search(qd, 100)
        rec = float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(approx, exact, strict=True)]))
        report[f"hnsw_recall@10_ef{ef}"] = rec
        print(f"HNSW efSearch {ef}: recall vs flat @10 {rec:.4f}", flush=True)
        idx.dense = DenseIndex(flat_dense.dim, {"kind": "hnsw", "ef_search": ef}, flat_dense.vectors, hnsw)
        row(f"{big_hnsw} ef{ef}", idx, "dense")
        row(f"{big_hnsw} ef{ef}", idx, "all")
        row(f"{big_hnsw} ef{ef}", idx, "all", colbert_depth=depths[-1])
    idx.close()
    report["rows"] = rows
    report["peak_rss_mib"] = rss_peak_mib()
    print(f"peak RSS {report['peak_rss_mib']:,.0f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
