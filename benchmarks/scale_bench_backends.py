"""Scale benchmark, vector-database part: ingest rate and query latency per mode, each backend vs ``M3Index``.

Synthetic passages shaped like BGE-M3's outputs (``Synth`` of ``search_bench.py``): dense unit
vectors of ``--dim`` (1024), ``--nnz`` (60) sparse weights over a Zipf vocabulary of 250,002 ids,
ColBERT matrices of ~``--tokens`` (150, ±50 %) unit vectors. Queries are built around a random target
passage; one query per call, ``k`` = 10, encoding excluded. Two parts:

1. dense + sparse at ``--n`` (100,000) passages, stores without token vectors: ingest rate
   (passages/s, upsert calls of ``--chunk`` passages, commit included) and p50 / p95 of ``dense``,
   ``sparse``, ``dense+sparse`` (client and engine fusion) and ``rrf``;
2. multi-vector at ``--colbert-n`` passages (default 1,000) with ``--colbert-dim``-d token vectors
   (default 1024): ``multivec``, ``all`` and ``rrf``. 100k × 150 × 1024 float32 token vectors are 61 GB —
   they do not fit this 24 GiB machine, and the local modes (Qdrant's local mode and Milvus Lite are
   Python engines) would take hours — hence the smaller multi-vector part.

Qdrant's local mode gets at most ``--qdrant-max-n`` (20,000) passages: it is a brute-force Python
engine (one dense+sparse query over 100k passages took 74 s here). Each backend gets ``--budget``
seconds of ingest per part (then the part goes on with the passages reached) and ``--query-budget``
seconds of queries per mode (at least ``--min-queries``); the counts are reported.
``run(args)`` / ``add_arguments(parser)`` let ``scale_bench.py`` call this.

    python benchmarks/scale_bench_backends.py                          # defaults above
    python benchmarks/scale_bench_backends.py --n 20000 --colbert-n 500 --queries 20   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# numpy's multi-threaded BLAS on the small matrices of the local-mode engines (one MaxSim per point)
# is ~10x slower than one thread on a loaded 2-core machine (threads spinning): one thread
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from search_bench import Synth, rss_peak_mib, take  # noqa: E402

from m3embed.backends import open_store  # noqa: E402
from m3embed.backends.base import take_rows  # noqa: E402

PART1_MODES = ("dense", "sparse", "dense+sparse", "rrf")
PART2_MODES = ("multivec", "all", "rrf")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=100_000, help="passages of the dense + sparse part")
    ap.add_argument("--colbert-n", type=int, default=1_000, help="passages of the multi-vector part")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--colbert-dim", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=150)
    ap.add_argument("--nnz", type=int, default=60)
    ap.add_argument("--vocab", type=int, default=250_002)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=1000, help="passages per add call")
    ap.add_argument("--backends", default="local,qdrant,milvus")
    ap.add_argument("--budget", type=float, default=900.0, help="ingest seconds per backend and part")
    ap.add_argument("--query-budget", type=float, default=60.0,
                    help="seconds of queries per mode (at least --min-queries are run)")
    ap.add_argument("--min-queries", type=int, default=3)
    ap.add_argument("--qdrant-max-n", type=int, default=20_000,
                    help="passages for Qdrant's local mode (a brute-force Python engine: it warns above 20,000 "
                         "points, and one dense+sparse query over 100k took 74 s here)")
    ap.add_argument("--workdir", default=None)


def make_store(name: str, root: Path, fp: dict, colbert: bool):
    if name == "local":
        return open_store("local", path=root / "local", model=fp, multivec="fp16" if colbert else "none",
                          store_text=False, autosave=False)
    if name == "qdrant":
        return open_store("qdrant", location=":memory:", collection="bench", model=fp, colbert=colbert)
    if name == "milvus":
        return open_store("milvus", uri=str(root / "milvus.db"), collection="bench", model=fp, colbert=colbert,
                          store_text=False, timeout=600)
    raise ValueError(name)


def pcts(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": len(xs)}


def bench_part(name: str, docs, qs, fp: dict, colbert: bool, modes, args, root: Path) -> dict:
    store = make_store(name, root, fp, colbert)
    n = len(docs) if name != "qdrant" else min(len(docs), args.qdrant_max_n)
    t0 = time.perf_counter()
    done = 0
    for s in range(0, n, args.chunk):
        rows = range(s, min(s + args.chunk, n))
        store.add([f"p{i}" for i in rows], take_rows(docs, rows))
        done = rows[-1] + 1
        if time.perf_counter() - t0 > args.budget and done < n:
            print(f"  {name}: ingest budget spent at {done:,} passages", flush=True)
            break
    if hasattr(store, "flush"):
        store.flush()
    ingest_s = time.perf_counter() - t0
    out: dict = {"passages": done, "ingest_s": ingest_s, "passages_per_s": done / ingest_s, "latency": {},
                 "count": store.count()}
    print(f"  {name}: {done:,} passages in {ingest_s:.1f} s ({done / ingest_s:,.0f}/s)", flush=True)
    for mode in modes:
        fusions = ["client"] + (["engine"] if mode in getattr(store, "engine_modes", ()) and name != "local" else [])
        for fusion in fusions:
            times: list[float] = []
            for i in range(len(qs)):
                if len(times) >= args.min_queries and sum(times) > args.query_budget:
                    break
                one = take(qs, i)
                t = time.perf_counter()
                store.search(one, k=10, mode=mode, fusion=fusion, with_payload=False)
                times.append(time.perf_counter() - t)
            key = mode if name == "local" else f"{mode} ({fusion})"
            out["latency"][key] = pcts(times[1:] if len(times) > 3 else times)  # the first call warms caches
            if name == "qdrant" and n < len(docs):
                out["latency"][key]["note"] = f"{n:,} of {len(docs):,} passages"
            print(f"    {key}: {json.dumps(out['latency'][key])}", flush=True)
    store.close()
    return out


def run(args) -> dict:
    synth = Synth(args.dim, args.vocab, args.nnz, args.tokens, seed=0)
    backends = [b for b in args.backends.split(",") if b]
    report: dict = {"args": vars(args), "part1": {}, "part2": {}, "load_avg_start": os.getloadavg(),
                    "cpu_count": os.cpu_count()}
    fp = {"name": "synthetic", "hash": "", "hidden_size": args.dim, "colbert_dim": args.colbert_dim,
          "vocab_size": args.vocab}
    work = Path(tempfile.mkdtemp(prefix="scale-backends-", dir=args.workdir))
    try:
        # part 1: dense + sparse at n
        t = time.perf_counter()
        docs = synth.passages(args.n, colbert=False)
        targets = synth.rng.integers(0, args.n, args.queries)
        qs = synth.queries(docs.dense, docs.lexical, args.queries, targets)
        print(f"part 1: generated {args.n:,} passages in {time.perf_counter() - t:.0f} s", flush=True)
        for name in backends:
            report["part1"][name] = bench_part(name, docs, qs, fp, False, PART1_MODES, args, work / f"p1-{name}")
            shutil.rmtree(work / f"p1-{name}", ignore_errors=True)
        del docs
        # part 2: multi-vector at colbert_n
        csynth = Synth(args.colbert_dim, args.vocab, args.nnz, args.tokens, seed=1) \
            if args.colbert_dim != args.dim else synth
        t = time.perf_counter()
        docs = csynth.passages(args.colbert_n, colbert=True)
        targets = csynth.rng.integers(0, args.colbert_n, args.queries)
        qs = csynth.queries(docs.dense, docs.lexical, args.queries, targets)
        fp2 = dict(fp, hidden_size=args.colbert_dim)
        report["part2_shape"] = {"passages": args.colbert_n, "token_vectors": int(docs.colbert.offsets[-1]),
                                 "dim": args.colbert_dim, "fp32_gb": docs.colbert.data.nbytes / 1e9}
        print(f"part 2: generated {args.colbert_n:,} passages ({docs.colbert.offsets[-1]:,} token vectors) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        for name in backends:
            report["part2"][name] = bench_part(name, docs, qs, fp2, True, PART2_MODES, args, work / f"p2-{name}")
            shutil.rmtree(work / f"p2-{name}", ignore_errors=True)
        report["peak_rss_mib"] = rss_peak_mib()
        report["load_avg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def markdown(report: dict) -> str:
    lines = []
    for part, title in (("part1", f"dense + sparse, {report['args']['n']:,} passages"),
                        ("part2", f"multi-vector, {report['args']['colbert_n']:,} passages")):
        lines += [f"**{title}**", "", "| backend | passages | ingest (passages/s) | mode | p50 ms | p95 ms | queries |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in report[part].items():
            for j, (mode, lat) in enumerate(r["latency"].items()):
                head = f"| {name} | {r['passages']:,} | {r['passages_per_s']:,.0f} |" if j == 0 else "| | | |"
                lines.append(f"{head} {mode} | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} | {lat['n']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--json", default=str(REPO / ".cache" / "backends" / "scale_backends.json"))
    args = ap.parse_args()
    report = run(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(markdown(report))


if __name__ == "__main__":
    main()
