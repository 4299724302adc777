"""Encode throughput: m3embed ``encode`` vs FlagEmbedding's ``BGEM3FlagModel.encode``.

Both engines encode the same real passages (a seeded mix of XQuAD-R paragraphs in 11 languages,
JSQuAD, PubMedQA abstracts, QMSum transcript windows and short queries from ``shared/data``)
with dense + sparse + ColBERT outputs, the same batch size and max length, on CPU, with the
same number of torch threads, from the same random checkpoint of XLM-R-base shape. Each engine
(and each of our precision modes) runs in its own subprocess, so peak RSS is per engine.

Run it in the reference's environment (FlagEmbedding needs transformers < 5)::

    REFPY benchmarks/encode_bench.py --n 1000

``src/`` is put on the children's ``PYTHONPATH``, so m3embed need not be installed there.
Reported per engine: load time, the first (cold) call on a small warm-up set, the timed call,
non-pad tokens/s of the timed call, peak RSS; per fast mode, the deviation of every
representation from our fp32 output; for our fp32, the deviation from the reference. On CPU a
roofline follows: the forward's multiply-add work (:func:`forward_gflop`), this machine's best
fp32 and int8 GEMM throughput at the model's shapes, each engine's achieved GFLOP/s, and the
tokens/s (and ratio to the reference) of an fp32 engine doing all of that work at the fp32 GEMM
peak — the ceiling of any equal-precision speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the repo
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "xlmr-tokenizer"
DEFAULT_CKPT = Path("~/.cache/m3embed/bench").expanduser()
SHAPE = {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "max_positions": 8194}

# fraction of the passages drawn from each source (the rest are short queries)
MIX = {"xquad_r": 0.40, "jsquad_ja": 0.12, "pubmedqa_en": 0.18, "qmsum_window": 0.10, "query": 0.20}


# ---------------------------------------------------------------------------------- data
def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _doc_text(d: dict) -> str:
    return f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"]


def select_texts(n: int, seed: int = 0, data: Path = DEFAULT_DATA) -> list[str]:
    """``n`` passages in the fixed mix ``MIX``, chosen and shuffled deterministically from ``seed``."""
    rng = random.Random(seed)
    counts = {k: round(v * n) for k, v in MIX.items()}
    counts["query"] = n - sum(c for k, c in counts.items() if k != "query")
    texts: list[str] = []
    xq = _read_jsonl(data / "xquad_r/paragraph/all_languages/corpus.jsonl")
    texts += [_doc_text(d) for d in rng.sample(xq, counts["xquad_r"])]
    js = _read_jsonl(data / "jsquad_ja/corpus.jsonl")
    texts += [_doc_text(d) for d in rng.sample(js, counts["jsquad_ja"])]
    pm = _read_jsonl(data / "pubmedqa_en/corpus.jsonl")
    texts += [_doc_text(d) for d in rng.sample(pm, counts["pubmedqa_en"])]
    meetings = _read_jsonl(data / "qmsum_longdoc/corpus.jsonl")
    for _ in range(counts["qmsum_window"]):  # a window of 500-4000 characters starting on a turn
        lines = rng.choice(meetings)["text"].split("\n")
        start, size = rng.randrange(len(lines)), rng.randint(500, 4000)
        window, i = "", start
        while i < len(lines) and len(window) < size:
            window += lines[i] + "\n"
            i += 1
        texts.append(window.strip())
    queries = []
    for folder in ("xquad_r/paragraph/all_languages", "jsquad_ja", "pubmedqa_en", "qmsum_longdoc"):
        queries += [q["text"] for q in _read_jsonl(data / folder / "queries.jsonl")]
    texts += rng.sample(queries, counts["query"])
    rng.shuffle(texts)
    return texts


def ensure_checkpoint(path: Path, tokenizer: Path) -> Path:
    if not (path / "config.json").exists():
        from m3embed.testing import build_random_checkpoint

        print(f"building the random checkpoint in {path} ...", flush=True)
        build_random_checkpoint(path, tokenizer, **SHAPE)
    return path


# ---------------------------------------------------------------------------------- workers
def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _busy_cpu_s() -> float | None:
    """Machine-wide non-idle CPU seconds so far (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _save_outputs(out_dir: Path, dense, lex_indptr, lex_ids, lex_w, col_data, col_offsets) -> None:
    np.savez(out_dir / "outputs.npz", dense=dense, lex_indptr=lex_indptr, lex_ids=lex_ids, lex_w=lex_w,
             col_data=col_data, col_offsets=col_offsets)


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    warm = texts[: args.warmup]
    out_dir = Path(args.out)
    stats: dict = {"engine": args.worker, "threads": torch.get_num_threads()}
    kw = {"batch_size": args.batch_size, "max_length": args.max_length}
    cuda = args.device.startswith("cuda")
    t0 = time.perf_counter()
    if args.worker.startswith("reference"):
        from FlagEmbedding import BGEM3FlagModel

        fp16 = args.worker == "reference:fp16"
        model = BGEM3FlagModel(str(args.checkpoint), use_fp16=fp16, devices=args.device)

        def run(xs):
            return model.encode(xs, return_dense=True, return_sparse=True, return_colbert_vecs=True, **kw)
    else:
        from m3embed import M3Model

        mode = args.worker.split(":", 1)[1]
        if cuda:  # GPU: a plain forward in the mode's dtype (the precision paths are CPU kernels)
            dtype = {"default": None, "fp32": None, "fp16": "fp16", "bf16": "bf16"}[mode]
            model = M3Model.from_pretrained(args.checkpoint, device=args.device, dtype=dtype)
        else:
            model = M3Model.from_pretrained(args.checkpoint, precision=None if mode == "default" else mode)

        def run(xs):
            return model.encode(xs, return_dense=True, return_sparse=True, return_colbert=True, **kw)
    stats["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(warm)
    stats["cold_call_s"] = time.perf_counter() - t0
    rusage0, busy0 = os.times(), _busy_cpu_s()
    t0 = time.perf_counter()
    out = run(texts)
    stats["encode_s"] = time.perf_counter() - t0
    rusage1, busy1 = os.times(), _busy_cpu_s()
    stats["cpu_user_s"] = rusage1.user - rusage0.user
    stats["cpu_sys_s"] = rusage1.system - rusage0.system
    # CPU time other processes took on this machine during the timed call, in cores (0 = quiet)
    own = stats["cpu_user_s"] + stats["cpu_sys_s"]
    stats["foreign_cores"] = max(0.0, (busy1 - busy0) - own) / stats["encode_s"] if busy0 is not None else None
    stats["peak_rss_mib"] = _peak_rss_mib()
    if cuda:
        import torch

        stats["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if args.worker.startswith("reference"):
        dense = np.asarray(out["dense_vecs"], dtype=np.float32)
        lex = out["lexical_weights"]
        indptr = np.concatenate([[0], np.cumsum([len(d) for d in lex])]).astype(np.int64)
        ids = np.array([int(k) for d in lex for k in d], dtype=np.int64)
        ws = np.array([float(v) for d in lex for v in d.values()], dtype=np.float32)
        cols = out["colbert_vecs"]
        col_offsets = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int64)
        col_data = np.concatenate(cols).astype(np.float32)
        _save_outputs(out_dir, dense, indptr, ids, ws, col_data, col_offsets)
    else:
        _save_outputs(out_dir, out.dense, out.lexical.indptr, out.lexical.ids, out.lexical.weights,
                      out.colbert.data, out.colbert.offsets)
        stats["n_tokens"] = int(np.sum(out.n_tokens))
    (out_dir / "stats.json").write_text(json.dumps(stats))


# ---------------------------------------------------------------------------------- roofline
def forward_gflop(lengths: list[int], shape: dict = SHAPE) -> dict:
    """Multiply-add work of one encoder forward over texts of ``lengths`` tokens (no padding), GFLOP.

    Linear layers: 2 FLOP per weight per token (Q, K, V, output, FFN in and out); attention:
    2·L²·H for QKᵀ and again for PV, per layer and text. Embeddings, layer norms, softmax and
    the heads are left out (elementwise work), so this is a lower bound on what any engine does.
    """
    h, f, n = shape["hidden"], shape["ffn"], shape["layers"]
    tokens = sum(lengths)
    linear = 2.0 * n * tokens * (4 * h * h + 2 * h * f)
    attention = 4.0 * n * h * sum(L * L for L in lengths)
    return {"linear": linear / 1e9, "attention": attention / 1e9, "total": (linear + attention) / 1e9}


def _roofline_worker(args: argparse.Namespace) -> None:
    """Best GEMM throughput of this machine at the model's shapes: fp32 (the equal-precision ceiling)
    and int8 × int8 → int32 (``torch._int_mm``, the int8 mode's kernel), in GFLOP/s."""
    import torch

    torch.set_num_threads(args.threads)
    h, f = SHAPE["hidden"], SHAPE["ffn"]
    # (rows, in, out): the encoder's four linear shapes at 2,048- and 4,096-token batches, and one large square
    shapes = [(m, k, n) for m in (2048, 4096) for k, n in ((h, 3 * h), (h, h), (h, f), (f, h))] + [(4096, 4096, 4096)]
    best: dict = {"fp32": 0.0, "int8": 0.0}
    for m, k, n in shapes:
        for kind in best:
            if kind == "fp32":
                a, b, op = torch.randn(m, k), torch.randn(k, n), torch.mm
            else:
                a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
                b, op = torch.randint(-127, 128, (n, k), dtype=torch.int8).t(), torch._int_mm
            op(a, b)
            reps, t0 = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - t0 < 0.5:
                op(a, b)
                reps += 1
            best[kind] = max(best[kind], 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e9)
    Path(args.out, "stats.json").write_text(json.dumps({"gemm_gflops": best, "threads": torch.get_num_threads()}))


# ---------------------------------------------------------------------------------- comparison
def _load(d: Path) -> dict:
    with np.load(d / "outputs.npz") as z:
        return {k: z[k] for k in z.files}


def deviations(a: dict, b: dict) -> dict:
    """Deviation of outputs ``a`` from ``b`` (same texts, same order)."""
    da, db = a["dense"].astype(np.float64), b["dense"].astype(np.float64)
    cos = np.sum(da * db, 1) / (np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1))
    res = {"dense_cos_min": float(cos.min()), "dense_cos_mean": float(cos.mean()),
           "dense_max_abs": float(np.abs(da - db).max())}
    # sparse: per text, union of token ids (a missing id has weight 0)
    worst, key_diff = 0.0, 0
    for i in range(len(a["lex_indptr"]) - 1):
        sa, sb = slice(a["lex_indptr"][i], a["lex_indptr"][i + 1]), slice(b["lex_indptr"][i], b["lex_indptr"][i + 1])
        wa = dict(zip(a["lex_ids"][sa].tolist(), a["lex_w"][sa].tolist(), strict=True))
        wb = dict(zip(b["lex_ids"][sb].tolist(), b["lex_w"][sb].tolist(), strict=True))
        key_diff += len(wa.keys() ^ wb.keys())
        for k in wa.keys() | wb.keys():
            worst = max(worst, abs(wa.get(k, 0.0) - wb.get(k, 0.0)))
    res["sparse_max_abs"] = worst
    res["sparse_key_diff"] = key_diff
    if np.array_equal(a["col_offsets"], b["col_offsets"]):
        ca, cb = a["col_data"].astype(np.float64), b["col_data"].astype(np.float64)
        res["colbert_max_abs"] = float(np.abs(ca - cb).max()) if len(ca) else 0.0
        res["colbert_cos_min"] = float(np.sum(ca * cb, 1).min()) if len(ca) else 1.0
    else:
        res["colbert_max_abs"] = float("nan")
        res["colbert_cos_min"] = float("nan")
    return res


# ---------------------------------------------------------------------------------- driver
def _run_engine(engine: str, args: argparse.Namespace, texts_file: Path, work: Path) -> tuple[dict, Path]:
    out = work / engine.replace(":", "_")
    out.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    reference = engine.startswith("reference")
    if reference and args.reference_pythonpath:  # e.g. a transformers 4.x + FlagEmbedding --target dir
        env["PYTHONPATH"] = os.pathsep.join([args.reference_pythonpath, env["PYTHONPATH"]])
    if engine == "reference:malloc":  # the reference under the allocator policy m3embed sets for itself
        env["MALLOC_MMAP_THRESHOLD_"] = env["MALLOC_TRIM_THRESHOLD_"] = str(1 << 30)
    if not reference and not args.malloc_tuning:
        env["M3EMBED_MALLOC_TUNING"] = "0"
    python = args.ours_python if not reference and args.ours_python else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--worker", engine, "--texts", str(texts_file),
           "--out", str(out), "--checkpoint", str(args.checkpoint), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--warmup", str(args.warmup), "--device", args.device]
    print(f"running {engine} ...", flush=True)
    with open(out / "log.txt", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.stdout.write((out / "log.txt").read_text()[-4000:])
        raise SystemExit(f"{engine} failed with exit code {rc}")
    return json.loads((out / "stats.json").read_text()), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="number of passages (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--modes", default="default,fp32,bf16,int8",
                   help="comma-separated m3embed modes: 'default' (plain transformers forward, fp32) "
                        "or a precision of M3Model.optimize (fp32, bf16, int8); 'default' always runs "
                        "first and the deviations of the others are measured against it")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also run FlagEmbedding (default on)")
    p.add_argument("--reference-malloc", action="store_true",
                   help="also run the reference with glibc's mmap/trim thresholds raised as m3embed does for "
                        "itself (m3embed.cpu_alloc), and print our ratios against that run too")
    p.add_argument("--malloc-tuning", action=argparse.BooleanOptionalAction, default=True,
                   help="let m3embed tune glibc malloc (default on; off sets M3EMBED_MALLOC_TUNING=0)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda: on cuda our modes are default/fp32, fp16, bf16 (dtype of a plain "
                        "forward) and the reference runs in fp32 and with use_fp16")
    p.add_argument("--reference-pythonpath", default=None,
                   help="prepended to PYTHONPATH for the reference only (FlagEmbedding needs transformers < 5)")
    p.add_argument("--texts-json", type=Path, default=None,
                   help="read the passages from this JSON list instead of selecting them from --data")
    p.add_argument("--dump-texts", type=Path, default=None, help="write the selected passages here and exit")
    p.add_argument("--threads", type=int, default=2, help="torch threads per engine (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the passage selection")
    p.add_argument("--warmup", type=int, default=40, help="texts in the untimed first call (default 40)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT, help="random checkpoint (built if absent)")
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--ours-python", default=None, help="interpreter for the m3embed engines (default: this one)")
    p.add_argument("--roofline", action=argparse.BooleanOptionalAction, default=True,
                   help="measure this machine's best fp32 / int8 GEMM throughput and print each engine's share "
                        "of it and the highest ratio an fp32 engine could reach (CPU only; default on)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    # internal: one engine in a child process
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--texts", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "roofline":
        _roofline_worker(args)
        return
    if args.worker:
        _worker(args)
        return

    sys.path.insert(0, str(REPO / "src"))
    if args.texts_json is not None:
        texts = json.loads(args.texts_json.read_text(encoding="utf-8"))[: args.n]
    else:
        texts = select_texts(args.n, args.seed, args.data)
    if args.dump_texts is not None:
        args.dump_texts.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        return
    ensure_checkpoint(args.checkpoint, args.tokenizer)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "default" not in modes:
        modes.insert(0, "default")
    modes.sort(key=lambda m: m != "default")
    refs = ["reference", "reference:fp16"] if args.device.startswith("cuda") else ["reference"]
    if args.reference_malloc and not args.device.startswith("cuda"):
        refs.append("reference:malloc")
    engines = (refs if args.reference else []) + [f"m3embed:{m}" for m in modes]

    with tempfile.TemporaryDirectory(prefix="m3bench") as tmp:
        work = Path(tmp)
        texts_file = work / "texts.json"
        texts_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        results, dirs = {}, {}
        for e in engines:
            results[e], dirs[e] = _run_engine(e, args, texts_file, work)
        roofline = None
        if args.roofline and not args.device.startswith("cuda"):
            roofline = _run_engine("roofline", args, texts_file, work)[0]
        n_tokens = results["m3embed:default"]["n_tokens"]
        base = _load(dirs["m3embed:default"])
        for e in engines:
            if e == "m3embed:default":
                if args.reference:
                    results[e]["deviation_vs_reference"] = deviations(base, _load(dirs["reference"]))
            elif e.startswith("m3embed"):
                results[e]["deviation_vs_fp32"] = deviations(_load(dirs[e]), base)
            elif e != "reference":
                results[e]["deviation_vs_reference"] = deviations(_load(dirs[e]), _load(dirs["reference"]))

    ref_tps = n_tokens / results["reference"]["encode_s"] if args.reference else None
    print(f"\n{args.n} passages, {n_tokens} non-pad tokens (max_length {args.max_length}), batch size "
          f"{args.batch_size}, {args.threads} threads, dense + sparse + ColBERT, {args.device}")
    malloc_tps = n_tokens / results["reference:malloc"]["encode_s"] if "reference:malloc" in results else None
    print(f"{'engine':24s} {'load s':>7s} {'cold s':>7s} {'encode s':>9s} {'tokens/s':>9s} {'vs ref':>7s} "
          f"{'peak RSS MiB':>13s} {'busy cores':>10s}" + (f" {'vs ref+malloc':>13s}" if malloc_tps else ""))
    for e in engines:
        r = results[e]
        tps = n_tokens / r["encode_s"]
        r["tokens_per_s"] = tps
        # on GPU each of our modes is compared with the reference at the same precision class
        peer = "reference:fp16" if e in ("m3embed:fp16", "m3embed:bf16") and "reference:fp16" in results else None
        peer_tps = n_tokens / results[peer]["encode_s"] if peer else ref_tps
        ratio = f"{tps / peer_tps:7.2f}" if peer_tps else "      -"
        r["ratio_vs_reference"] = tps / peer_tps if peer_tps else None
        fc = r.get("foreign_cores")
        gpu = f"  peak GPU {r['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in r else ""
        extra = ""
        if malloc_tps:
            r["ratio_vs_reference_malloc"] = tps / malloc_tps
            extra = f" {tps / malloc_tps:13.2f}"
        print(f"{e:24s} {r['load_s']:7.1f} {r['cold_call_s']:7.1f} {r['encode_s']:9.1f} {tps:9.0f} {ratio} "
              f"{r['peak_rss_mib']:13.0f} {'-' if fc is None else f'{fc:.2f}':>10s}{gpu}{extra}")
    print("(busy cores: CPU other processes used during the timed call; > 0.1 means the timing is disturbed)")
    print("\ndeviations (dense cos min / max abs of dense, sparse weights, ColBERT; sparse keys differing)")
    for e in engines:
        dev = results[e].get("deviation_vs_fp32") or results[e].get("deviation_vs_reference")
        if dev:
            against = "default" if "deviation_vs_fp32" in results[e] else "reference"
            print(f"{e:24s} vs {against:9s}: cos_min {dev['dense_cos_min']:.6f}  dense {dev['dense_max_abs']:.2e}  "
                  f"sparse {dev['sparse_max_abs']:.2e}  colbert {dev['colbert_max_abs']:.2e}  "
                  f"keys {dev['sparse_key_diff']}")
    if roofline is not None:
        roofline["work_gflop"] = _print_roofline(roofline, results, texts, args, ref_tps, n_tokens)
    if args.json:
        meta = {"n": args.n, "n_tokens": n_tokens, "batch_size": args.batch_size, "max_length": args.max_length,
                "threads": args.threads, "seed": args.seed, "device": args.device,
                "malloc_tuning": args.malloc_tuning}
        args.json.write_text(json.dumps({"meta": meta, "results": results, "roofline": roofline}, indent=2))


def _print_roofline(roofline: dict, results: dict, texts: list[str], args: argparse.Namespace,
                    ref_tps: float | None, n_tokens: int) -> dict:
    """Print each engine's achieved GFLOP/s against the machine's GEMM peaks; return the work counted."""
    from m3embed.tokenize import M3Tokenizer

    lengths = [len(x) for x in M3Tokenizer.from_dir(args.checkpoint).tokenize(texts, max_length=args.max_length)]
    work = forward_gflop(lengths)
    peak32, peak8 = roofline["gemm_gflops"]["fp32"], roofline["gemm_gflops"]["int8"]
    print(f"\nroofline: the forward is {work['total']:.0f} GFLOP ({work['linear']:.0f} linear + "
          f"{work['attention']:.0f} attention, no padding); best GEMM here: fp32 {peak32:.0f} GFLOP/s, "
          f"int8 {peak8:.0f} GOP/s ({roofline['threads']} threads)")
    for e, r in results.items():
        achieved = work["total"] / r["encode_s"]
        r["achieved_gflops"] = achieved
        print(f"{e:24s} {achieved:6.0f} GFLOP/s = {achieved / peak32:5.1%} of the fp32 GEMM peak")
    ceiling = peak32 / work["total"] * n_tokens  # tokens/s with every FLOP at the fp32 GEMM peak
    if ref_tps:
        print(f"an fp32 engine at 100 % of the fp32 GEMM peak on all of that work: {ceiling:.0f} tokens/s = "
              f"{ceiling / ref_tps:.2f}x the reference")
    return work


if __name__ == "__main__":
    main()
