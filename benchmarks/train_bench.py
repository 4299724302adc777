"""Training throughput and memory: m3embed ``M3Trainer`` vs FlagEmbedding 1.4.2's M3 fine-tuning.

Two measurements, each engine / setting in its own subprocess (so peak RSS is per run):

``compare`` — the same random checkpoint (XLM-R vocabulary, configurable depth/width), the same data
and batch: unified fine-tuning (dense + sparse + ColBERT, ensemble, self-distillation on from the
first step), B queries × G passages, every text longer than its max length so that each step has
exactly ``B·q_len + B·G·p_len`` tokens, no padding. FlagEmbedding runs through its own runner and HF
Trainer (``python -m FlagEmbedding.finetune.embedder.encoder_only.m3`` equivalent) with a timing
callback. Reported: tokens/s over steps 2…N (step 1 is warm-up), total wall time, peak RSS.

``memory`` — peak RSS of one unified training step (forward, backward, AdamW) on B queries of 32
tokens, each with 2 passages of 2048 tokens (a positive and a hard negative), with and without
split-batch, as B grows; a linear fit ``peak = a + b·B`` per mode gives the largest B under a memory
budget (default 8 GiB).

Run with the reference's interpreter (FlagEmbedding needs transformers < 5); ``src/`` goes on the
children's ``PYTHONPATH``::

    REFPY benchmarks/train_bench.py compare --steps 6
    REFPY benchmarks/train_bench.py memory --batches 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "xlmr-tokenizer"
DEFAULT_WORK = REPO / ".cache" / "train_bench"
WORDS = ("the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his",
         "an", "were", "are", "which", "this", "be", "or", "has", "had", "not", "first", "one", "their", "its",
         "new", "after", "who", "they", "have", "her", "she", "two", "been", "other", "when", "there", "all",
         "during", "into", "school", "time", "may", "years", "more", "most", "only", "over", "city", "some", "world",
         "would", "where", "later", "up", "such", "used", "many", "can", "state", "about", "national", "out",
         "known", "university", "united", "then", "made")


# ---------------------------------------------------------------------------------- shared set-up
def _text(rng, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def make_data(path: Path, rows: int, group: int, q_words: int, p_words: int, seed: int = 0) -> None:
    """Rows whose query and passages all exceed the max lengths (every step has the same token count)."""
    import random

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"query": f"{i} " + _text(rng, q_words), "pos": [f"{i} " + _text(rng, p_words)],
                   "neg": [f"{i}-{k} " + _text(rng, p_words) for k in range(group - 1)]}
            f.write(json.dumps(row) + "\n")


def make_checkpoint(path: Path, shape: dict, tokenizer: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    sys.path.insert(0, str(REPO / "src"))
    from m3embed.testing import build_random_checkpoint

    return build_random_checkpoint(path, tokenizer, **shape)


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    return env


def _run_child(args: list[str], threads: int, timeout: int, pythonpath: str | None = None) -> dict:
    cmd = [sys.executable, __file__, *args]
    env = _child_env(threads)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env["PYTHONPATH"]])
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout)[-2500:], "wall_s": wall}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _gpu_peak() -> dict:
    import torch

    return {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


# ---------------------------------------------------------------------------------- workers
def worker_ours(a: argparse.Namespace) -> dict:
    import torch

    from m3embed.train import M3Trainer, TrainConfig

    torch.set_num_threads(a.threads)
    cfg = TrainConfig(model=a.ckpt, train_data=[a.data], output_dir=a.out, group_size=a.group, batch_size=a.batch,
                      query_max_len=a.q_len, passage_max_len=a.p_len, max_steps=a.steps, learning_rate=1e-5,
                      warmup_ratio=0.1, temperature=0.02, self_distill=True, self_distill_start_step=-1,
                      sub_batch_size=a.sub_batch, progress=False, plot=False, seed=a.seed, max_grad_norm=1.0,
                      device=a.device)
    t0 = time.perf_counter()
    trainer = M3Trainer(cfg)
    setup = time.perf_counter() - t0
    result = trainer.train()
    steps = result.history
    timed = steps[1:] if len(steps) > 1 else steps
    secs = sum(h["seconds"] for h in timed)
    toks = sum(h["tokens"] for h in timed)
    return {"engine": "m3embed", "setup_s": setup, "step_s": [round(h["seconds"], 3) for h in steps],
            "tokens_per_step": steps[-1]["tokens"], "tokens_per_s": toks / secs,
            "losses": [round(h["loss"], 4) for h in steps], "peak_rss_mib": _peak_rss_mib(), **_gpu_peak()}


def worker_flag(a: argparse.Namespace) -> dict:
    import torch
    from FlagEmbedding.finetune.embedder.encoder_only.m3 import (
        EncoderOnlyEmbedderM3DataArguments,
        EncoderOnlyEmbedderM3ModelArguments,
        EncoderOnlyEmbedderM3Runner,
        EncoderOnlyEmbedderM3TrainingArguments,
    )
    from transformers import HfArgumentParser, TrainerCallback

    torch.set_num_threads(a.threads)
    shutil.rmtree(a.out, ignore_errors=True)
    argv = ["--model_name_or_path", a.ckpt, "--train_data", a.data, "--output_dir", a.out,
            "--train_group_size", str(a.group), "--query_max_len", str(a.q_len), "--passage_max_len", str(a.p_len),
            "--per_device_train_batch_size", str(a.batch), "--max_steps", str(a.steps), "--learning_rate", "1e-5",
            "--warmup_ratio", "0.1", "--temperature", "0.02", "--unified_finetuning", "True",
            "--use_self_distill", "True", "--self_distill_start_step", "-1", "--normalize_embeddings", "True",
            *(["--use_cpu", "True"] if a.device == "cpu" else ["--bf16", "True"]),
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--seed", str(a.seed), "--max_grad_norm", "1.0",
            "--cache_path", str(Path(a.out).parent / "hf_cache"), "--disable_tqdm", "True"]
    if a.sub_batch:
        argv += ["--sub_batch_size", str(a.sub_batch)]
    parser = HfArgumentParser((EncoderOnlyEmbedderM3ModelArguments, EncoderOnlyEmbedderM3DataArguments,
                               EncoderOnlyEmbedderM3TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    t0 = time.perf_counter()
    runner = EncoderOnlyEmbedderM3Runner(model_args=model_args, data_args=data_args, training_args=training_args)
    setup = time.perf_counter() - t0
    ends: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(round(float(logs["loss"]), 4))

    runner.trainer.add_callback(Clock())
    runner.trainer.train()
    step_s = [ends[i + 1] - ends[i] for i in range(len(ends) - 1)]
    timed = step_s[1:] if len(step_s) > 1 else step_s
    tokens_per_step = a.batch * a.q_len + a.batch * a.group * a.p_len
    return {"engine": "FlagEmbedding 1.4.2", "setup_s": setup, "step_s": [round(s, 3) for s in step_s],
            "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step * len(timed) / sum(timed),
            "losses": losses, "peak_rss_mib": _peak_rss_mib(), **_gpu_peak()}


def worker_memory(a: argparse.Namespace) -> dict:
    """One unified step on ``batch`` queries × 2 passages of ``p_len`` tokens; peak RSS over the step."""
    import psutil
    import torch

    from m3embed.train import M3Trainer, TrainConfig

    torch.set_num_threads(a.threads)
    cfg = TrainConfig(model=a.ckpt, train_data=[a.data], output_dir=a.out, group_size=2, batch_size=a.batch,
                      query_max_len=a.q_len, passage_max_len=a.p_len, max_steps=1, learning_rate=1e-5,
                      sub_batch_size=a.sub_batch, progress=False, plot=False)
    trainer = M3Trainer(cfg)
    batch = trainer.data.collate(0, 0)
    import gc

    gc.collect()
    rss0 = psutil.Process().memory_info().rss / 2**20
    peak0 = _peak_rss_mib()
    t0 = time.perf_counter()
    out = trainer.compute_loss(batch)
    out.backward.backward()
    trainer.optimizer.step()
    secs = time.perf_counter() - t0
    return {"batch": a.batch, "passages": int(batch.p_ids.shape[0]), "sub_batch": a.sub_batch,
            "tokens": batch.n_tokens, "p_len": int(batch.p_ids.shape[1]),
            "rss_before_mib": rss0, "peak_before_mib": peak0, "peak_rss_mib": _peak_rss_mib(),
            "step_peak_over_before_mib": _peak_rss_mib() - rss0, "seconds": secs}


# ---------------------------------------------------------------------------------- drivers
def _shape(a: argparse.Namespace) -> dict:
    return {"layers": a.layers, "hidden": a.hidden, "heads": a.heads, "ffn": 4 * a.hidden,
            "max_positions": a.max_positions}


def cmd_compare(a: argparse.Namespace) -> None:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = _shape(a)
    ckpt = make_checkpoint(work / f"ckpt-{a.layers}x{a.hidden}", shape, Path(a.tokenizer))
    data = work / f"data-b{a.batch}-g{a.group}.jsonl"
    make_data(data, rows=a.batch * (a.steps + 2), group=a.group, q_words=a.q_len * 2, p_words=a.p_len * 2)
    common = ["--ckpt", str(ckpt), "--data", str(data), "--batch", str(a.batch), "--group", str(a.group),
              "--q-len", str(a.q_len), "--p-len", str(a.p_len), "--steps", str(a.steps), "--threads",
              str(a.threads), "--seed", "42", "--device", a.device]
    runs: list[dict] = []
    for rep in range(a.repeats):
        for engine in a.engines:
            out = _run_child([f"_{engine}", *common, "--out", str(work / f"out-{engine}")], a.threads, a.timeout,
                             a.flag_pythonpath if engine == "flag" else None)
            out.setdefault("engine", engine)
            out["repeat"] = rep
            runs.append(out)
            print(json.dumps(out), file=sys.stderr)
    summary = {"shape": shape, "batch": a.batch, "group": a.group, "q_len": a.q_len, "p_len": a.p_len,
               "steps": a.steps, "threads": a.threads, "device": a.device, "runs": runs}
    ok = {e: [r for r in runs if r["engine"] == n and "error" not in r]
          for e, n in (("ours", "m3embed"), ("flag", "FlagEmbedding 1.4.2"))}
    if ok["ours"] and ok["flag"]:
        def med(xs):
            xs = sorted(xs)
            return xs[len(xs) // 2]

        t_ours = med([r["tokens_per_s"] for r in ok["ours"]])
        t_flag = med([r["tokens_per_s"] for r in ok["flag"]])
        m_ours = med([r["peak_rss_mib"] for r in ok["ours"]])
        m_flag = med([r["peak_rss_mib"] for r in ok["flag"]])
        summary["result"] = {"ours_tokens_per_s": t_ours, "flag_tokens_per_s": t_flag,
                             "throughput_ratio": t_ours / t_flag,
                             "ours_peak_rss_mib": m_ours, "flag_peak_rss_mib": m_flag, "memory_ratio": m_ours / m_flag}
        if all("peak_gpu_mib" in r for r in ok["ours"] + ok["flag"]):
            g_ours = med([r["peak_gpu_mib"] for r in ok["ours"]])
            g_flag = med([r["peak_gpu_mib"] for r in ok["flag"]])
            summary["result"].update(ours_peak_gpu_mib=g_ours, flag_peak_gpu_mib=g_flag,
                                     gpu_memory_ratio=g_ours / g_flag)
    print(json.dumps(summary, indent=2))


def cmd_memory(a: argparse.Namespace) -> None:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = _shape(a)
    ckpt = make_checkpoint(work / f"ckpt-{a.layers}x{a.hidden}-long", shape, Path(a.tokenizer))
    data = work / "data-long.jsonl"
    make_data(data, rows=max(a.batches) + 1, group=2, q_words=a.q_len * 2, p_words=a.p_len * 2)
    import psutil

    results: dict[str, list[dict]] = {}
    modes = [m for m in (("full", None), ("split", a.sub_batch)) if m[0] in a.modes]
    for mode, sub in modes:
        results[mode] = []
        for b in a.batches:
            if mode == "full" and b > a.max_full_batch:
                continue
            done = [(r["batch"], r["peak_rss_mib"]) for r in results[mode] if "error" not in r]
            if len(done) >= 2:  # never start a run that would take the machine's free memory
                (b0, m0), (b1, m1) = done[-2], done[-1]
                predicted = m1 + (m1 - m0) / max(1, b1 - b0) * (b - b1)
                free = psutil.virtual_memory().available / 2**20
                if predicted > 0.8 * free:
                    results[mode].append({"batch": b, "skipped": f"predicted {predicted:.0f} MiB > 80% of the "
                                                                 f"{free:.0f} MiB available"})
                    break
            args = ["_memory", "--ckpt", str(ckpt), "--data", str(data), "--batch", str(b), "--group", "2",
                    "--q-len", str(a.q_len), "--p-len", str(a.p_len), "--steps", "1", "--threads", str(a.threads),
                    "--out", str(work / "out-memory")]
            if sub:
                args += ["--sub-batch", str(sub)]
            out = _run_child(args, a.threads, a.timeout)
            results[mode].append(out)
            print(json.dumps({"mode": mode, **out}), file=sys.stderr)
    budget = a.budget_gib * 1024
    fits = {}
    for mode, rows in results.items():
        pts = [(r["batch"], r["peak_rss_mib"]) for r in rows if "peak_rss_mib" in r]
        if len(pts) >= 2:
            n = len(pts)
            mx = sum(b for b, _ in pts) / n
            my = sum(m for _, m in pts) / n
            slope = sum((b - mx) * (m - my) for b, m in pts) / max(1e-9, sum((b - mx) ** 2 for b, _ in pts))
            icpt = my - slope * mx
            fits[mode] = {"intercept_mib": icpt, "mib_per_pair": slope,
                          "max_batch_in_budget": int((budget - icpt) // slope) if slope > 0 else None}
    print(json.dumps({"shape": shape, "p_len": a.p_len, "q_len": a.q_len, "sub_batch": a.sub_batch,
                      "budget_gib": a.budget_gib, "results": results, "fit": fits}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def model_args(p, layers, hidden, heads, max_positions):
        p.add_argument("--layers", type=int, default=layers)
        p.add_argument("--hidden", type=int, default=hidden)
        p.add_argument("--heads", type=int, default=heads)
        p.add_argument("--max-positions", type=int, default=max_positions)
        p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
        p.add_argument("--work", default=str(DEFAULT_WORK))
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--timeout", type=int, default=1800)

    c = sub.add_parser("compare", help="tokens/s and peak RSS, ours vs FlagEmbedding")
    model_args(c, 4, 256, 4, 514)
    c.add_argument("--batch", type=int, default=4)
    c.add_argument("--group", type=int, default=4)
    c.add_argument("--q-len", type=int, default=32)
    c.add_argument("--p-len", type=int, default=128)
    c.add_argument("--steps", type=int, default=6)
    c.add_argument("--repeats", type=int, default=1)
    c.add_argument("--engines", nargs="+", default=["ours", "flag"], choices=["ours", "flag"])
    c.add_argument("--device", default="cpu", help="cpu (default) or cuda (both engines in bf16 autocast)")
    c.add_argument("--flag-pythonpath", default=None,
                   help="prepended to PYTHONPATH for FlagEmbedding only (it needs transformers < 5)")
    c.set_defaults(func=cmd_compare)

    m = sub.add_parser("memory", help="peak RSS of a 2048-token step with and without split-batch")
    model_args(m, 4, 256, 4, 2050)
    m.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    m.add_argument("--max-full-batch", type=int, default=8)
    m.add_argument("--sub-batch", default="1")
    m.add_argument("--q-len", type=int, default=32)
    m.add_argument("--p-len", type=int, default=2048)
    m.add_argument("--budget-gib", type=float, default=8.0)
    m.add_argument("--modes", nargs="+", default=["full", "split"], choices=["full", "split"])
    m.set_defaults(func=cmd_memory)

    for name, fn in (("_ours", worker_ours), ("_flag", worker_flag), ("_memory", worker_memory)):
        w = sub.add_parser(name)
        for arg in ("--ckpt", "--data", "--out"):
            w.add_argument(arg, required=True)
        for arg in ("--batch", "--group", "--q-len", "--p-len", "--steps", "--threads"):
            w.add_argument(arg, type=int, required=True)
        w.add_argument("--seed", type=int, default=42)
        w.add_argument("--sub-batch", default=None)
        w.add_argument("--device", default="cpu")
        w.set_defaults(func=lambda a, fn=fn: print(json.dumps(fn(_fix_sub(a)))))
    a = ap.parse_args()
    a.func(a)


def _fix_sub(a: argparse.Namespace) -> argparse.Namespace:
    if a.sub_batch not in (None, "auto"):
        a.sub_batch = int(a.sub_batch)
    return a


if __name__ == "__main__":
    main()
