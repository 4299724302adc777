"""Scale-out benchmark, Ray part: encoding throughput on Ray workers vs plain ``encode`` at equal CPU.

Configurations, all on the same real passages (the seeded mix of ``encode_bench.select_texts``:
XQuAD-R paragraphs in 11 languages, JSQuAD, PubMedQA abstracts, QMSum windows, short queries),
the same model (default ``m3embed-small``), dense + sparse outputs, batch size 32, max length 512:

* ``plain``       — ``model.encode(texts)`` in a fresh process with 2 torch threads;
* ``parts``       — the same process, one ``model.encode`` call per part: exactly the batches the Ray
  workers run, so ``ray 1×2`` vs ``parts`` is Ray's own overhead and ``parts`` vs ``plain`` the cost
  of batching within parts instead of across the whole set (padding: small parts mix lengths);
* ``ray 1×2``     — a local Ray cluster (2 CPUs), 1 worker with 2 torch threads;
* ``ray 2×1``     — the same cluster size, 2 workers with 1 thread each.

Every configuration runs ``--rounds`` times in alternating order; the best round is reported
(the machine is shared: the ``busy`` column says how disturbed each was).

The passages are written as ``--shards`` ``.jsonl`` shards (default 2) and encoded in parts of
``--part-rows`` records (default n / 2: one part per shard).
Reported per configuration: wall seconds of the encoding (Ray: first part submitted → last part
written, so reading, parquet writing and scheduling are in it), non-pad tokens/s, the ratio to
``plain``, the one-off startup (Ray: cluster start + workers loading the model), peak RSS (Ray:
the largest worker and the driver), and ``busy`` = CPU seconds other processes took per second of
the run (a shared machine: above ~0.2 the timing is disturbed; for Ray it also counts Ray's daemons and
the workers' model loading, so it is an upper bound). Ray outputs are checked against
``plain`` (max abs difference of the dense vectors).

::

    python benchmarks/scale_bench.py                 # 400 passages, 2 rounds, ~5 min on 2 quiet cores
    python benchmarks/scale_bench.py --n 200 --json out.json
    python benchmarks/scale_bench.py --backends      # then run scale_bench_backends.py (vector DBs), if present
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from encode_bench import _busy_cpu_s, select_texts  # noqa: E402


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _plain_child(args: argparse.Namespace) -> None:
    """Child process: load the model, encode every text once (timed), print a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from m3embed import M3Model, M3Output

    shards = [[json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
              for f in sorted(Path(args._plain).glob("*.jsonl"))]
    texts = [t for sh in shards for t in sh]
    # "global": one call over every text (batches drawn from the whole set); "parts": one call per part,
    # exactly the batches the Ray workers run
    chunks = [texts] if args.plain_mode == "global" else [
        sh[a:a + args.part_rows] for sh in shards for a in range(0, len(sh), args.part_rows)]
    t0 = time.perf_counter()
    model = M3Model.from_pretrained(args.model)
    load_s = time.perf_counter() - t0
    busy0, cpu0, t0 = _busy_cpu_s(), _cpu_self(), time.perf_counter()
    outs = [model.encode(c, batch_size=args.batch_size, max_length=args.max_length, return_dense=True,
                         return_sparse=True) for c in chunks]
    wall = time.perf_counter() - t0
    out = M3Output.concat(outs)
    busy = (_busy_cpu_s() - busy0 - (_cpu_self() - cpu0)) / wall if busy0 is not None else None
    np.save(Path(args._plain).parent / f"{args.plain_mode}_dense.npy", out.dense)
    print(json.dumps({"seconds": wall, "tokens": int(out.n_tokens.sum()), "startup_s": load_s,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "busy": busy}))


def _run_plain(args: argparse.Namespace, shards: Path, mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, __file__, "--_plain", str(shards), "--threads", "2", "--model", args.model,
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--plain-mode", mode,
           "--part-rows", str(args.part_rows)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if p.returncode != 0:
        raise RuntimeError(f"plain encode failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _run_ray(args: argparse.Namespace, shards: Path, work: Path, workers: int, threads: int) -> dict:
    from m3embed.distributed import encode_shards, read_encoded

    out_dir = work / f"ray-{workers}x{threads}"
    busy0, cpu0, t0 = _busy_cpu_s(), _cpu_self(), time.perf_counter()
    res = encode_shards(shards, out_dir, args.model, dense=True, sparse=True, batch_size=args.batch_size,
                        max_length=args.max_length, part_rows=args.part_rows, workers=workers,
                        threads_per_worker=threads, overwrite=True, show_progress=False)
    total = time.perf_counter() - t0
    own = (_cpu_self() - cpu0) + res.worker_cpu_s  # driver + workers (worker CPU counted inside parts only)
    # CPU of everything else per second of the whole call; it includes Ray's own daemons and the workers'
    # model loading, so it is an upper bound on the disturbance from other users of the machine
    busy = (_busy_cpu_s() - busy0 - own) / total if busy0 is not None else None
    dense = np.concatenate([p.output.dense for p in read_encoded(out_dir)])
    return {"seconds": res.encode_s, "tokens": res.tokens_encoded, "startup_s": res.startup_s, "total_s": total,
            "peak_rss_mib": max(res.worker_peak_rss_mib or [0.0]),
            "driver_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "busy": busy,
            "parts": res.parts_encoded, "restarts": res.worker_restarts, "dense": dense}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=400, help="passages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="m3embed-small")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--part-rows", type=int, default=None, help="records per part (default: n / 2)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="repeat every configuration (best round reported)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "scale_bench")
    ap.add_argument("--backends", action="store_true",
                    help="afterwards run benchmarks/scale_bench_backends.py (vector-database ingest / latency)")
    ap.add_argument("--_plain", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--plain-mode", default="global", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._plain:
        _plain_child(args)
        return
    args.part_rows = args.part_rows or max(1, -(-args.n // 2))

    from m3embed.checkpoint import resolve

    args.model = str(resolve(args.model))  # assemble a named model once, before any worker starts
    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=args.work, prefix="run-"))
    shards = work / "input"
    shards.mkdir()
    texts = select_texts(args.n, args.seed)
    per = -(-len(texts) // args.shards)
    for s in range(args.shards):
        with open(shards / f"shard-{s:02d}.jsonl", "w", encoding="utf-8") as f:
            for i in range(s * per, min(len(texts), (s + 1) * per)):
                f.write(json.dumps({"_id": f"p{i:06d}", "text": texts[i]}, ensure_ascii=False) + "\n")
    print(f"{len(texts)} passages in {args.shards} shards, parts of {args.part_rows}, model {args.model}, "
          f"batch {args.batch_size}, max_length {args.max_length}, {os.cpu_count()} CPUs", flush=True)

    import logging

    import ray

    # one local cluster for every Ray run (each run starts and stops its own workers)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, logging_level=logging.WARNING,
             log_to_driver=False)
    configs = ["plain 1×2", "parts 1×2", "ray 1×2", "ray 2×1"]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    ref = None
    try:
        for rnd in range(args.rounds):
            for name in configs if rnd % 2 == 0 else configs[::-1]:  # alternate the order between rounds
                if name.startswith(("plain", "parts")):
                    r = _run_plain(args, shards, "global" if name.startswith("plain") else "parts")
                    if name.startswith("plain"):
                        ref = np.load(work / "global_dense.npy")
                else:
                    workers, threads = (int(x) for x in name.split()[1].split("×"))
                    r = _run_ray(args, shards, work, workers, threads)
                r["tokens_per_s"] = r["tokens"] / r["seconds"]
                runs[name].append(r)
                busy = f"{r['busy']:.2f}" if r.get("busy") is not None else "n/a"
                print(f"  round {rnd + 1} {name}: {r['tokens_per_s']:,.0f} tokens/s in {r['seconds']:.1f} s "
                      f"(busy {busy})", flush=True)
    finally:
        ray.shutdown()
    for name in configs[2:]:
        for r in runs[name]:
            r["max_abs_diff_dense"] = float(np.abs(r.pop("dense") - ref).max())

    best = {name: max(rs, key=lambda r: r["tokens_per_s"]) for name, rs in runs.items()}
    base = best["plain 1×2"]["tokens_per_s"]
    base_parts = best["parts 1×2"]["tokens_per_s"]
    print(f"\nbest of {args.rounds} round(s) per configuration (all rounds in --json):")
    print(f"{'config':<10} {'seconds':>8} {'tokens/s':>9} {'ratio':>6} {'overhead':>8} {'vs parts':>8} "
          f"{'startup s':>9} {'peak RSS MiB':>12} {'busy':>5}  notes")
    for name, r in best.items():
        tps = r["tokens_per_s"]
        r["ratio"], r["ratio_vs_parts"] = tps / base, tps / base_parts
        busy = f"{r['busy']:.2f}" if r.get("busy") is not None else "n/a"
        notes = ""
        if name.startswith("ray"):
            notes = (f"end-to-end {r['total_s']:.1f} s incl. worker startup; driver RSS {r['driver_rss_mib']:.0f} "
                     f"MiB; dense max |Δ| vs plain {r['max_abs_diff_dense']:.1e}; restarts {r['restarts']}")
        print(f"{name:<10} {r['seconds']:>8.1f} {tps:>9,.0f} {tps / base:>6.2f} {1 - tps / base:>8.1%} "
              f"{tps / base_parts:>8.2f} {r['startup_s']:>9.1f} {r['peak_rss_mib']:>12,.0f} {busy:>5}  {notes}")
    if args.json:
        args.json.write_text(json.dumps({"n": len(texts), "tokens": best["plain 1×2"]["tokens"],
                                         "part_rows": args.part_rows, "model": args.model, "runs": runs},
                                        indent=1))
    if args.backends:
        other = HERE / "scale_bench_backends.py"
        if other.is_file():
            subprocess.run([sys.executable, str(other)], check=False)
        else:
            print(f"{other}: not present; skipping the vector-database part")


if __name__ == "__main__":
    main()
