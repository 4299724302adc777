"""Fine-tune the sparse head (and optionally the last encoder layer) on cached states (a CPU stage).

A full fine-tune runs ~1,000 tokens/s on two cores; with the lower layers frozen, they give the same
states at every epoch, so this stage computes them once (bf16 fast path, ~5,000 tokens/s) and then
trains on them with the full M3 objective (dense, sparse, ColBERT, their ensemble and
self-distillation). With ``train_layer: true`` the cache holds layer n-1's output and a step costs
the last layer's forward and backward (~10× less than the whole model's); the gradients of all three
heads reach that layer. With ``train_layer: false`` the cache holds the encoder's output, only the
sparse head trains and a step costs the heads alone (~0.1 s), so it can take many epochs; the dense
and ColBERT outputs stay bit for bit the input model's.

Data: ``groups`` rows of ``train_mix/train_short_docs`` (query, its positive, ``group - 1`` of its
BM25 hard negatives), drawn from rows outside ``fit_hybrid_weights.py``'s held-out dev set so the
dev set stays clean; optionally ``long_groups`` rows of ``train_long_docs`` (passages cut at
``long_passage_max_len``) in batches of their own, so the sparse head also sees long documents.
Writes ``<out>/metrics.jsonl``, ``<out>/loss.png``, the checkpoint ``<out>/model`` (bge-m3 layout)
and, with ``--delta``, the registry delta of the result.

Usage: python scripts/train_top_layer.py --config configs/m3embed-small/sparse_head_cached.yaml --out DIR
           [--delta src/m3embed/models/data/m3embed-small-delta.safetensors]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from m3embed import M3Model
from m3embed.encode import pad_batch
from m3embed.io import atomic_write
from m3embed.train.losses import LossConfig, Reps, m3_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_hybrid_weights import SHARED, _training_subset, short_dev  # a sibling script

DEFAULTS = {
    "model": "m3embed-small", "groups": 5000, "xling_groups": 0, "group_size": 4, "query_max_len": 64,
    "passage_max_len": 256, "batch_size": 16, "epochs": 2.0, "lr_layer": 2e-5, "lr_sparse": 1e-3, "warmup_ratio": 0.1,
    "temperature": 0.02, "head_loss_weights": [1.0, 0.3, 1.0], "ensemble_weights": [1.0, 0.3, 1.0],
    "self_distill": True, "cache_tokens": 4096, "seed": 7, "threads": 2, "train_layer": True,
    "long_groups": 0, "long_passage_max_len": 2048,
}


class StateCache:
    """Token ids and the frozen prefix's output states of each text, packed: ``ids [T]``, ``states [T, H]`` fp16."""

    def __init__(self, ids: torch.Tensor, states: torch.Tensor, offsets: torch.Tensor) -> None:
        self.ids, self.states, self.offsets = ids, states, offsets

    @classmethod
    @torch.inference_mode()
    def build(cls, model: M3Model, seqs: list[list[int]], n_layers: int, tokens: int) -> StateCache:
        """Run the bf16 fast path's embeddings and first ``n_layers`` layers over ``seqs`` (sorted by length)."""
        fast = model.__dict__["_accel"]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out: list[torch.Tensor | None] = [None] * len(seqs)
        t0, done, pos = time.time(), 0, 0
        while pos < len(order):
            longest = len(seqs[order[min(len(order) - 1, pos + 7)]])
            batch = order[pos : pos + max(1, tokens // longest)]
            pos += len(batch)
            x, m = pad_batch([seqs[i] for i in batch], model.tokenizer.special.pad, torch.device("cpu"))
            h = fast(x, m, n_layers=n_layers).to(torch.float16)
            for r, i in enumerate(batch):
                out[i] = h[r, : len(seqs[i])].clone()
            done += int(m.sum())
        print(f"cached {len(seqs)} texts, {done} tokens in {time.time() - t0:.0f} s", flush=True)
        lens = torch.tensor([len(s) for s in seqs])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
        return cls(ids, torch.cat(out), offsets)

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``(states [B, L, H] fp32, ids [B, L], mask [B, L] bool)``."""
        spans = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in idx]
        n = max(b - a for a, b in spans)
        h = torch.zeros(len(idx), n, self.states.shape[1])
        ids = torch.ones(len(idx), n, dtype=torch.long)
        mask = torch.zeros(len(idx), n, dtype=torch.bool)
        for r, (a, b) in enumerate(spans):
            h[r, : b - a] = self.states[a:b].float()
            ids[r, : b - a] = self.ids[a:b]
            mask[r, : b - a] = True
        return h, ids, mask


def layer_forward(layer: torch.nn.Module, h: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """An XLM-R layer's training forward (dropout off) on ``h [B, L, H]`` with a key mask ``[B, L]``.

    Written out with SDPA rather than calling the HF module, whose attention-mask format differs
    between transformers 4.x and 5.x; same math as ``XLMRobertaLayer`` in eval mode.
    """
    sa, ao = layer.attention.self, layer.attention.output
    b, n, hidden = h.shape
    q, k, v = (m(h).view(b, n, heads, hidden // heads).transpose(1, 2) for m in (sa.query, sa.key, sa.value))
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    h1 = ao.LayerNorm(ao.dense(a.transpose(1, 2).reshape(b, n, hidden)) + h)
    return layer.output.LayerNorm(layer.output.dense(layer.intermediate(h1)) + h1)


def training_groups(
    n: int, n_xling: int, group_size: int, seed: int, n_long: int = 0
) -> tuple[list[str], list[list[int]], list[list[int]]]:
    """(texts, groups of text indices [query, positive, negatives…], long-document groups in the same form).

    ``n`` rows of train_short_docs minus the dev set, and ``n_xling`` cross-lingual rows (an English
    gettext message, its translation, translations of other messages into the same language as
    negatives) from the 40,000 pairs the dense stage trained on, so ``xling_dev`` stays held out.
    ``n_long`` rows of train_long_docs (positive + its first ``group - 1`` negatives; the eval sets are other files).
    """
    dev = short_dev(100, 0)
    held = set(dev.queries.values()) | {d.text for d in dev.corpus}
    with gzip.open(SHARED / "train_mix/train_short_docs.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["query"] not in held and not set(r["pos"]) & held]
    rng = random.Random(seed)
    texts: list[str] = []
    index: dict[str, int] = {}

    def tid(t: str) -> int:
        if t not in index:
            index[t] = len(texts)
            texts.append(t)
        return index[t]

    groups = []
    for r in rng.sample(rows, n):
        negs = r.get("neg", [])
        if len(negs) >= group_size - 1:
            groups.append([tid(r["query"])] + [tid(p) for p in [r["pos"][0], *rng.sample(negs, group_size - 1)]])
    if n_xling:
        with gzip.open(SHARED / "gettext_parallel_train/pairs.jsonl.gz", "rt", encoding="utf-8") as f:
            pairs = f.read().splitlines()
        trained = [json.loads(pairs[i]) for i in sorted(_training_subset(pairs, 40000, 3))]
        by_lang: dict[str, list[str]] = {}
        for r in trained:
            by_lang.setdefault(r["lang"], []).append(r["pos"][0])
        for r in rng.sample(trained, n_xling):
            pool = [t for t in rng.sample(by_lang[r["lang"]], min(8, len(by_lang[r["lang"]]))) if t != r["pos"][0]]
            if len(pool) >= group_size - 1:
                groups.append([tid(r["query"])] + [tid(p) for p in [r["pos"][0], *pool[: group_size - 1]]])
    long_groups = []
    if n_long:
        with gzip.open(SHARED / "train_mix/train_long_docs.jsonl.gz", "rt", encoding="utf-8") as f:
            long_rows = [json.loads(line) for line in f]
        for r in rng.sample(long_rows, min(n_long, len(long_rows))):
            if len(r.get("neg", [])) >= group_size - 1:
                long_groups.append([tid(r["query"])] + [tid(p) for p in [r["pos"][0], *r["neg"][: group_size - 1]]])
    return texts, groups, long_groups


def plot(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    for key in ("loss", "dense", "sparse", "colbert", "ensemble"):
        ax.plot(steps, [h[key] for h in history], label=key, lw=2 if key == "loss" else 1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, help="YAML overriding the defaults")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--delta", type=Path, help="also write the registry delta of the trained model here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key (YAML value), e.g. --set self_distill=false")
    args = ap.parse_args()
    cfg = dict(DEFAULTS)
    sources = [(str(args.config), yaml.safe_load(args.config.read_text(encoding="utf-8")) or {})] if args.config else []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        sources.append((f"--set {item}", {key.strip(): yaml.safe_load(value)}))
    for where, extra in sources:
        unknown = sorted(set(extra) - set(DEFAULTS))
        if unknown:
            raise SystemExit(f"{where}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
        cfg.update(extra)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    args.out.mkdir(parents=True, exist_ok=True)

    texts, groups, long_groups = training_groups(
        cfg["groups"], cfg["xling_groups"], cfg["group_size"], cfg["seed"], cfg["long_groups"]
    )
    queries = {g[0] for g in groups + long_groups}
    long_passages = {i for g in long_groups for i in g[1:]}
    model = M3Model.from_pretrained(cfg["model"]).optimize("bf16")  # bf16 copy: the cache only
    seqs = [None] * len(texts)
    roles = (("query", cfg["query_max_len"]), ("passage", cfg["passage_max_len"]),
             ("long", cfg["long_passage_max_len"]))

    def role(i: int) -> str:
        return "query" if i in queries else "long" if i in long_passages else "passage"

    for name, max_len in roles:
        idx = [i for i in range(len(texts)) if role(i) == name]
        if not idx:
            continue
        for i, s in zip(idx, model.tokenizer.tokenize([texts[i] for i in idx], max_length=max_len), strict=True):
            seqs[i] = s
    n_layers = model.config.num_hidden_layers
    # With the last layer frozen too, cache its output: a step then costs the heads alone.
    cached_layers = n_layers - 1 if cfg["train_layer"] else n_layers
    cache = StateCache.build(model, seqs, cached_layers, cfg["cache_tokens"])
    print(f"{len(groups)} groups, {len(long_groups)} long-document groups, {len(texts)} texts", flush=True)

    model = M3Model.from_pretrained(cfg["model"])  # fp32 weights to train
    model.eval()  # no dropout: the cached prefix ran without it too
    model.requires_grad_(False)
    layer = model.backbone.encoder.layer[n_layers - 1]
    model.sparse_linear.requires_grad_(True)
    param_groups = [{"params": model.sparse_linear.parameters(), "lr": cfg["lr_sparse"]}]
    if cfg["train_layer"]:
        layer.requires_grad_(True)
        param_groups.append({"params": layer.parameters(), "lr": cfg["lr_layer"]})
    heads = model.config.num_attention_heads
    unused = torch.tensor(sorted(model.tokenizer.special.unused))
    opt = torch.optim.AdamW(param_groups, weight_decay=0.0)
    steps = int(cfg["epochs"] * (len(groups) + len(long_groups)) / cfg["batch_size"])
    warm = max(1, int(cfg["warmup_ratio"] * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (steps - s) / steps)
    loss_cfg = LossConfig(temperature=cfg["temperature"], head_loss_weights=tuple(cfg["head_loss_weights"]),
                          ensemble_weights=tuple(cfg["ensemble_weights"]))

    def reps(idx: list[int]) -> Reps:
        h, ids, mask = cache.batch(idx)
        out = layer_forward(layer, h, mask, heads) if cfg["train_layer"] else h
        keep = mask & ~torch.isin(ids, unused)
        return Reps(ids=ids, mask=mask.long(), dense=model.dense_from_hidden(out),
                    sparse=model.sparse_from_hidden(out) * keep, colbert=model.colbert_from_hidden(out, mask.long()))

    rng = random.Random(cfg["seed"])
    # Long-document groups get batches of their own (as the paper's length buckets), drawn in
    # proportion to their share of all groups.
    pools = [p for p in (groups, long_groups) if p]
    orders: list[list[int]] = [[] for _ in pools]
    history: list[dict] = []
    acc: dict[str, float] = {}
    t0 = time.time()
    metrics = args.out / "metrics.jsonl"
    with open(metrics, "w", encoding="utf-8") as log:
        for step in range(1, steps + 1):
            k = 0 if len(pools) == 1 else rng.choices(range(len(pools)), weights=[len(p) for p in pools])[0]
            pool, order = pools[k], orders[k]
            if len(order) < min(cfg["batch_size"], len(pool)):
                order[:] = range(len(pool))
                rng.shuffle(order)
            batch = [pool[order.pop()] for _ in range(min(cfg["batch_size"], len(order)))]
            out = m3_loss(reps([g[0] for g in batch]), reps([i for g in batch for i in g[1:]]), cfg["group_size"],
                          loss_cfg, self_distill=cfg["self_distill"])
            opt.zero_grad()
            out.backward.backward()
            opt.step()
            sched.step()
            for k, v in {"loss": float(out.loss.detach()), **out.parts}.items():
                acc[k] = acc.get(k, 0.0) + v
            if step % 20 == 0 or step == steps:
                n = 20 if step % 20 == 0 else step % 20
                rec = {"step": step, **{k: round(v / n, 4) for k, v in acc.items()},
                       **dict(zip(("lr_sparse", "lr_layer"), sched.get_last_lr(), strict=False)),
                       "seconds": round(time.time() - t0, 1)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                history.append(rec)
                acc = {}
                print(json.dumps(rec), flush=True)
    trained = "last layer + sparse head" if cfg["train_layer"] else "sparse head"
    plot(history, args.out / "loss.png", f"{cfg['model']} — {trained} on cached states")
    model.save_pretrained(args.out / "model")
    if args.delta:
        from m3embed.models.registry import make_delta

        info = make_delta(model, args.delta, dtype=torch.float16, head_dtype=torch.float32)
        print(f"{args.delta}: {info['bytes'] / 1e6:.1f} MB, {info['tensors']} tensors", flush=True)


if __name__ == "__main__":
    main()
