"""Load test of ``m3embed serve`` on loopback: served vs offline throughput, latency, overload and recovery.

1. Offline: ``model.encode`` on a seeded pool of real texts (XQuAD-R paragraphs in 11 languages,
   PubMedQA abstracts, XQuAD-R questions) — tokens/s with the server's batch settings and with
   ``encode``'s defaults, in this process, with the server's torch thread count.
2. Served: ``m3embed serve`` in a subprocess; ``--clients`` concurrent clients post
   ``/v1/embeddings`` requests of 1, 2, 4 or 8 texts taken in turn from the same pool, for
   ``--duration`` seconds (or ``--max-requests``): requests/s, tokens/s, p50/p95/p99 latency,
   errors, and the ratio served / offline tokens/s.
3. Overload: ``--burst-clients`` connections hammer the server past its ``--max-queue`` for
   ``--burst-seconds``: counts of 200 / 503 / other, server RSS before and after (psutil), then
   ``--clients`` clients again for ``--recovery-seconds``: errors must be 0 again.
4. SIGTERM: the server's exit code; peak RSS of the server (VmHWM) and of this process.

Everything runs on 127.0.0.1 and is bounded by the durations and counts given.

    python benchmarks/serve_bench.py                      # m3embed-small, 60 s
    python benchmarks/serve_bench.py --duration 20 --tiny # a tiny random checkpoint, quick check
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
SIZES = (1, 2, 4, 8)  # texts per request


# ---------------------------------------------------------------------------------- texts
def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def select_texts(n: int, seed: int, data: Path) -> list[str]:
    """``n`` texts: 55 % XQuAD-R paragraphs, 15 % PubMedQA abstracts, 30 % XQuAD-R questions (seeded)."""
    rng = random.Random(seed)
    xq = data / "xquad_r/paragraph/all_languages"
    docs = [f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"]
            for d in _read_jsonl(xq / "corpus.jsonl")]
    pubmed = [d["text"] for d in _read_jsonl(data / "pubmedqa_en/corpus.jsonl")]
    queries = [q["text"] for q in _read_jsonl(xq / "queries.jsonl")]
    n_doc, n_pm = round(0.55 * n), round(0.15 * n)
    texts = rng.sample(docs, n_doc) + rng.sample(pubmed, n_pm) + rng.sample(queries, n - n_doc - n_pm)
    rng.shuffle(texts)
    return texts


# ---------------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "m3embed.cli", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--max-queue", str(args.max_queue), "--max-batch-tokens",
           str(args.max_batch_tokens), "--max-batch-size", str(args.max_batch_size), "--round-batches",
           str(args.round_batches), "--max-wait-ms", str(args.max_wait_ms), "--max-length", str(args.max_length),
           "--no-access-log"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not become ready in 300 s")
        time.sleep(0.2)


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _busy_cpu_s() -> float:
    """Machine-wide non-idle CPU seconds so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Average cores that processes other than ``procs`` kept busy between ``start()`` and ``stop()``."""

    def __init__(self, *procs: psutil.Process) -> None:
        self.procs = procs

    def _ours(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.procs if p.is_running())

    def start(self) -> None:
        self.t, self.busy, self.own = time.perf_counter(), _busy_cpu_s(), self._ours()

    def stop(self) -> float:
        wall = time.perf_counter() - self.t
        return max(0.0, (_busy_cpu_s() - self.busy) - (self._ours() - self.own)) / wall


def wait_idle(base: str, timeout: float = 300.0) -> float:
    """Wait until the server's queue is empty and its worker runs no round (+1 s to trim); returns seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = metric_values(base)
        if m["m3embed_queue_depth"] == 0 and m["m3embed_worker_busy"] == 0:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    return time.monotonic() - t0


def metric_values(base: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ---------------------------------------------------------------------------------- clients
async def load(base: str, texts: list[str], clients: int, seconds: float, max_requests: int, seed: int,
               retry_sleep: float = 0.0) -> dict:
    """``clients`` closed-loop clients posting /v1/embeddings for ``seconds`` (or ``max_requests`` in all)."""
    cursor = itertools.count()
    sent = itertools.count()
    statuses: collections.Counter = collections.Counter()
    lat: list[float] = []
    lat_refused: list[float] = []
    tokens = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
        async def client(i: int) -> None:
            nonlocal tokens
            rng = random.Random(seed * 100_003 + i)
            while time.perf_counter() < stop and next(sent) < max_requests:
                batch = [texts[next(cursor) % len(texts)] for _ in range(rng.choice(SIZES))]
                t = time.perf_counter()
                try:
                    r = await c.post("/v1/embeddings", json={"input": batch, "model": "bench",
                                                             "encoding_format": "base64"})
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] += 1
                    continue
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t)
                    tokens += r.json()["usage"]["prompt_tokens"]
                else:
                    lat_refused.append(time.perf_counter() - t)
                    if retry_sleep:
                        await asyncio.sleep(retry_sleep)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    ok = statuses.get(200, 0)
    q = np.percentile(lat, [50, 95, 99]) * 1000 if lat else [float("nan")] * 3
    return {"seconds": wall, "requests": sum(statuses.values()), "ok": ok, "statuses": dict(statuses),
            "errors": sum(v for k, v in statuses.items() if k != 200), "req_per_s": ok / wall,
            "tokens": tokens, "tokens_per_s": tokens / wall, "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2],
            "refused_p50_ms": float(np.percentile(lat_refused, 50) * 1000) if lat_refused else None}


# ---------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="m3embed-small", help="model name or checkpoint dir (default m3embed-small)")
    p.add_argument("--tiny", action="store_true", help="use a tiny random checkpoint instead (quick check)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the main load phase")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap on requests of the main phase")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--pool", type=int, default=600, help="distinct texts (also what the offline run encodes)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (server and offline)")
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--round-batches", type=int, default=1)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--burst-clients", type=int, default=256)
    p.add_argument("--burst-seconds", type=float, default=15.0)
    p.add_argument("--recovery-seconds", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    import torch

    from m3embed import M3Model

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_name = args.model
    if args.tiny:
        from m3embed.testing import build_random_checkpoint

        model_name = str(build_random_checkpoint(tmp / "tiny", REPO.parent / "shared/reference/xlmr-tokenizer",
                                                 layers=2, hidden=64, heads=4, ffn=256))
    texts = select_texts(args.pool, args.seed, args.data)
    res: dict = {"model": args.model if not args.tiny else "tiny", "threads": args.threads, "pool": len(texts),
                 "clients": args.clients, "cpu_count": os.cpu_count()}

    # ---- offline (again after the served phase: the machine may be shared, the ratio uses the mean)
    model = M3Model.from_pretrained(model_name)
    model.encode(texts[:16], max_length=args.max_length)  # warm-up

    me = psutil.Process()

    cpu_rates: list[float] = []  # offline tokens per CPU-second of this process, server settings

    def offline(**kw) -> float:
        other = OtherLoad(me)
        other.start()
        cpu0 = sum(me.cpu_times()[:2])
        t0 = time.perf_counter()
        out = model.encode(texts, max_length=args.max_length, **kw)
        tps = int(out.n_tokens.sum()) / (time.perf_counter() - t0)
        per_cpu = int(out.n_tokens.sum()) / (sum(me.cpu_times()[:2]) - cpu0)
        if kw:
            cpu_rates.append(per_cpu)
        print(f"  offline {kw or 'encode defaults'}: {tps:,.0f} tokens/s, {per_cpu:,.0f} tokens per CPU-second "
              f"(other processes busy: {other.stop():.2f} cores)", flush=True)
        return tps

    server_kw = {"batch_size": args.max_batch_size, "max_batch_tokens": args.max_batch_tokens}
    n_tok = int(sum(len(x) for x in model.tokenizer.tokenize(texts, max_length=args.max_length)))
    off = res["offline"] = {"texts": len(texts), "tokens": n_tok, "mean_tokens": n_tok / len(texts),
                            "tokens_per_s_before": offline(**server_kw), "tokens_per_s_encode_defaults": offline()}
    print(f"offline encode: {len(texts)} texts, {n_tok} tokens (mean {n_tok / len(texts):.0f}); "
          f"{off['tokens_per_s_before']:,.0f} tokens/s (batch {args.max_batch_size}, {args.max_batch_tokens} "
          f"tokens/batch), {off['tokens_per_s_encode_defaults']:,.0f} tokens/s (encode defaults)", flush=True)

    # ---- served
    log = tmp / "server.log"
    proc, base = start_server(model_name, args, log)
    sp = psutil.Process(proc.pid)
    try:
        asyncio.run(load(base, texts, 4, 3.0, 40, args.seed + 1))  # warm-up
        m0 = metric_values(base)
        other = OtherLoad(me, sp)
        other.start()
        server_cpu0 = sum(sp.cpu_times()[:2])
        main_phase = asyncio.run(load(base, texts, args.clients, args.duration, args.max_requests, args.seed))
        main_phase["other_busy_cores"] = other.stop()
        main_phase["server_cpu_s"] = sum(sp.cpu_times()[:2]) - server_cpu0
        m1 = metric_values(base)
        rounds = m1["m3embed_batch_texts_count"] - m0["m3embed_batch_texts_count"]
        main_phase["mean_texts_per_round"] = (m1["m3embed_batch_texts_sum"] - m0["m3embed_batch_texts_sum"]) / rounds
        main_phase["mean_requests_per_round"] = (
            m1["m3embed_batch_requests_sum"] - m0["m3embed_batch_requests_sum"]) / rounds
        off = res["offline"]
        off["tokens_per_s_after"] = offline(**server_kw)  # the server is idle now
        off_mean = (off["tokens_per_s_before"] + off["tokens_per_s_after"]) / 2
        main_phase["ratio_vs_offline"] = main_phase["tokens_per_s"] / off_mean
        main_phase["ratio_vs_best_offline"] = main_phase["tokens_per_s"] / max(
            off["tokens_per_s_before"], off["tokens_per_s_after"], off["tokens_per_s_encode_defaults"])
        # CPU-time efficiency: robust to a shared machine (wall-clock rates move with other processes' load)
        main_phase["tokens_per_server_cpu_s"] = main_phase["tokens"] / main_phase["server_cpu_s"]
        main_phase["cpu_efficiency_ratio"] = main_phase["tokens_per_server_cpu_s"] / (sum(cpu_rates) / len(cpu_rates))
        res["served"] = main_phase
        _print_phase(f"served ({args.clients} clients, {args.duration:g} s)", main_phase)
        print(f"  rounds: {rounds:.0f}, mean {main_phase['mean_texts_per_round']:.1f} texts / "
              f"{main_phase['mean_requests_per_round']:.1f} requests per round; other processes busy: "
              f"{main_phase['other_busy_cores']:.2f} cores", flush=True)
        print(f"  offline again (server idle): {off['tokens_per_s_after']:,.0f} tokens/s", flush=True)
        print(f"  served / offline tokens/s: {main_phase['ratio_vs_offline']:.3f} (vs the mean of the two offline "
              f"runs with the server's batch settings), {main_phase['ratio_vs_best_offline']:.3f} (vs the fastest "
              "offline run)", flush=True)
        print(f"  served tokens per server CPU-second: {main_phase['tokens_per_server_cpu_s']:,.0f} = "
              f"{main_phase['cpu_efficiency_ratio']:.3f} × offline tokens per CPU-second", flush=True)

        # ---- overload
        wait_idle(base)
        rss_before = sp.memory_info().rss / 2**20
        burst = asyncio.run(load(base, texts, args.burst_clients, args.burst_seconds, 10**9, args.seed + 2,
                                 retry_sleep=0.01))
        alive = proc.poll() is None
        ready = httpx.get(base + "/ready", timeout=10).status_code if alive else None
        # requests that timed out may still be in the worker's round: let it finish (it then hands freed memory back)
        idle_s = wait_idle(base)
        rss_after_burst = sp.memory_info().rss / 2**20
        res["burst"] = {**burst, "alive": alive, "ready_status": ready, "rss_before_mib": rss_before,
                        "rss_after_mib": rss_after_burst}
        _print_phase(f"overload ({args.burst_clients} connections, max queue {args.max_queue}, "
                     f"{args.burst_seconds:g} s)", burst)
        if burst["refused_p50_ms"] is not None:
            print(f"  refused requests answered in {burst['refused_p50_ms']:.0f} ms (p50)", flush=True)
        print(f"  server alive: {alive}, /ready: {ready}; RSS before {rss_before:.0f} MiB, after "
              f"{rss_after_burst:.0f} MiB ({rss_after_burst - rss_before:+.0f} MiB; measured once the worker was idle, "
              f"{idle_s:.0f} s after the last client response)", flush=True)
        recovery = asyncio.run(load(base, texts, args.clients, args.recovery_seconds, args.max_requests,
                                    args.seed + 3))
        wait_idle(base)
        res["recovery"] = {**recovery, "rss_mib": sp.memory_info().rss / 2**20}
        _print_phase(f"recovery ({args.clients} clients, {args.recovery_seconds:g} s)", recovery)
        print(f"  server RSS after recovery: {res['recovery']['rss_mib']:.0f} MiB "
              f"({res['recovery']['rss_mib'] - rss_before:+.0f} MiB vs before the overload)", flush=True)
        res["server_peak_rss_mib"] = vm_hwm_mib(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    res["server_exit_code"] = proc.returncode
    res["bench_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: server {res.get('server_peak_rss_mib', float('nan')):.0f} MiB, bench process "
          f"{res['bench_peak_rss_mib']:.0f} MiB; server exit code after SIGTERM: {proc.returncode}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def _print_phase(title: str, r: dict) -> None:
    print(f"{title}: {r['requests']} requests in {r['seconds']:.1f} s; {r['req_per_s']:.1f} ok req/s, "
          f"{r['tokens_per_s']:,.0f} tokens/s; latency p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, "
          f"p99 {r['p99_ms']:.0f} ms; statuses {r['statuses']}; errors {r['errors']}", flush=True)


if __name__ == "__main__":
    main()
