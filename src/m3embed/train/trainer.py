"""M3Trainer: the training loop — stages, AdamW with linear warm-up/decay, gradient accumulation,
mixed precision, split-batch, cross-device negatives, checkpoints with exact resume, logs and plot.

Output directory::

    output_dir/
      config.json, model.safetensors, tokenizer.json, colbert_linear.pt, sparse_linear.pt   (final model)
      checkpoint-<step>/   the model in the same layout + trainer_state.pt + rng_state_<rank>.pt
      metrics.jsonl        one line per logged step: loss per head, lr, grad norm, tokens/s
      loss.png             the loss curves
      train_config.yaml    the resolved configuration
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..checkpoint import atomic_torch_save
from ..io import atomic_write
from ..model import M3Model
from . import distributed as dist_utils
from .batching import enable_layer_checkpointing, encode_reps
from .config import ConfigError, TrainConfig
from .data import TrainBatch, TrainData, load_datasets, memory_scale, paper_batch_sizes
from .losses import LossConfig, LossOutput, m3_loss

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
PART_NAMES = ("dense", "sparse", "colbert", "ensemble", "skd_dense", "skd_sparse", "skd_colbert")


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss or gradient; the message names the step and batch."""


@dataclass
class TrainResult:
    step: int
    output_dir: Path
    last_checkpoint: Path | None
    history: list[dict[str, Any]]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-N`` directory with the largest N that holds a trainer state, or None."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _CKPT_RE.match(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


class M3Trainer:
    """Train an :class:`M3Model` as the paper / reference: ``M3Trainer(config).train()``.

    ``model`` and ``data`` may be passed in (tests, custom pipelines); otherwise they are built from
    the config. ``eval_fn(model, step) -> dict`` runs on rank 0 before the first step (``eval_at_start``)
    and after each checkpoint, and its numbers go to the metrics log; with ``eval_data`` set in the
    config, the eval harness is used.
    """

    def __init__(self, config: TrainConfig, *, model: M3Model | None = None, data: TrainData | None = None,
                 eval_fn: Callable[[M3Model, int], dict[str, float]] | None = None) -> None:
        config.validate()
        if not config.output_dir:
            raise ConfigError("config: output_dir: required (where checkpoints and logs go)")
        self.cfg = config
        self.output_dir = Path(config.output_dir)
        self.eval_fn = eval_fn if eval_fn is not None else (_harness_eval(config) if config.eval_data else None)
        self.device = _pick_device(config.device)
        self.world = dist_utils.init_from_env(self.device.type)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.world.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.negatives_cross_device and config.in_batch_negatives:
            dist_utils.require_process_group("negatives_cross_device")
        self.resume_dir = self._resolve_resume()
        _seed_everything(config.seed)
        if model is not None and self.resume_dir is not None:  # a given model continues from the checkpoint
            model.load_state_dict(M3Model.from_pretrained(self.resume_dir).state_dict())
        self.model = model if model is not None else self._load_model()
        self.model.to(self.device)
        self._check_colbert_dim()
        self._setup_stage()
        dist_utils.broadcast_parameters(self.model)
        self.data = data if data is not None else self._load_data()
        self._check_group_size()
        self.loss_cfg = LossConfig.from_config(config)
        self.steps_per_epoch = self.data.batches_per_epoch() // config.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"config: grad_accum={config.grad_accum} exceeds the {self.data.batches_per_epoch()} "
                              "batches of an epoch")
        self.total_steps = config.max_steps or max(1, math.ceil(config.num_epochs * self.steps_per_epoch))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ConfigError("config: nothing to train (every parameter is frozen)")
        self.optimizer = self._build_optimizer()
        warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * self.total_steps)
        self.warmup_steps = warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_schedule(warmup, self.total_steps))
        self.amp_dtype = _amp_dtype(config.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.epoch = 0
        self.batch_index = 0  # next global batch of the epoch
        self.history: list[dict[str, Any]] = []
        self.eval_history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self._zero_sparse_warned = 0
        if self.resume_dir is not None:
            self._load_state(self.resume_dir)

    # ------------------------------------------------------------------ setup
    def _resolve_resume(self) -> Path | None:
        r = self.cfg.resume_from
        if not r:
            return None
        if r == "latest":
            found = latest_checkpoint(self.output_dir)
            if found is None:
                logger.warning("resume_from: latest — no checkpoint under %s, starting fresh", self.output_dir)
            return found
        path = Path(r)
        if not (path / STATE_FILE).is_file():
            raise ConfigError(f"config: resume_from: {path} is not a checkpoint directory (no {STATE_FILE})")
        return path

    def _load_model(self) -> M3Model:
        cfg = self.cfg
        if not cfg.model and self.resume_dir is None:
            raise ConfigError("config: model: required (a checkpoint directory or hub id)")
        if self.resume_dir is not None:  # the checkpoint holds the trained encoder and heads
            return M3Model.from_pretrained(self.resume_dir, attn_implementation=cfg.attn_implementation)
        return M3Model.from_pretrained(cfg.model, fresh_heads=cfg.fresh_heads, colbert_dim=cfg.colbert_dim,
                                       attn_implementation=cfg.attn_implementation)

    def _check_colbert_dim(self) -> None:
        want = self.cfg.colbert_dim
        if want > 0 and self.model.colbert_dim != want:
            raise ConfigError(f"config: colbert_dim={want} but the model's ColBERT head has {self.model.colbert_dim} "
                              "outputs (set fresh_heads: true to start a new head of that width)")

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.stage == "fix_encoder":
            # a frozen encoder gives fixed features: dropout would only add noise (and attention dropout
            # sends SDPA to its slow math path: steps took 2× as long on CPU)
            self.model.backbone.eval()

    def _setup_stage(self) -> None:
        cfg, m = self.cfg, self.model
        self._train_mode()
        for p in m.parameters():
            p.requires_grad_(True)
        if cfg.stage == "fix_encoder":
            for p in m.backbone.parameters():
                p.requires_grad_(False)
        if cfg.stage == "dense":  # heads take no part: keep them out of the optimizer
            for p in [*m.colbert_linear.parameters(), *m.sparse_linear.parameters()]:
                p.requires_grad_(False)
        if cfg.fix_position_embedding:
            emb = getattr(getattr(m.backbone, "embeddings", None), "position_embeddings", None)
            if emb is None:
                raise ConfigError("config: fix_position_embedding: the encoder has no embeddings.position_embeddings")
            emb.weight.requires_grad_(False)
        if cfg.freeze:
            names = dict(m.named_parameters())
            for pattern in cfg.freeze:
                hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
                if not hits:  # a typo would otherwise silently train what was meant to stay fixed
                    raise ConfigError(f"config: freeze: {pattern!r} matches no parameter of the model (names look "
                                      f"like {', '.join(list(names)[:2])}, ..., colbert_linear.weight)")
                for n in hits:
                    names[n].requires_grad_(False)
        if cfg.gradient_checkpointing:
            if cfg.stage == "fix_encoder":
                logger.warning("gradient_checkpointing has no effect with stage fix_encoder (no encoder backward)")
            else:
                enable_layer_checkpointing(m)

    def _load_data(self) -> TrainData:
        cfg = self.cfg
        if not cfg.train_data:
            raise ConfigError("config: train_data: required (one or more jsonl / jsonl.gz files)")
        for name, limit in (("query_max_len", cfg.query_max_len), ("passage_max_len", cfg.passage_max_len)):
            if limit > self.model.max_positions:
                raise ConfigError(f"config: {name}={limit} exceeds the model's position limit of "
                                  f"{self.model.max_positions} tokens")
        datasets = load_datasets(cfg.train_data, self.model.tokenizer, query_max_len=cfg.query_max_len,
                                 passage_max_len=cfg.passage_max_len, query_instruction=cfg.query_instruction,
                                 query_instruction_format=cfg.query_instruction_format,
                                 need_scores=cfg.use_teacher_scores, group_size=cfg.group_size)
        sizes: dict[int, list[int]] | int = cfg.batch_size
        if cfg.length_buckets:
            if cfg.bucket_batch_sizes is not None:
                table = {d: list(cfg.bucket_batch_sizes) for d in range(len(datasets))}
            else:
                scale = cfg.batch_scale
                if scale is None:
                    budget = cfg.memory_budget_gib if cfg.memory_budget_gib is not None else _device_memory_gib(
                        self.device)
                    scale = memory_scale(budget, int(self.model.config.num_hidden_layers), self.model.hidden_size)
                table = {d: paper_batch_sizes(ds.group_size, scale, cfg.max_bucket_batch_size)
                         for d, ds in enumerate(datasets)}
            sizes = table
            if self.world.is_main:
                for d, ds in enumerate(datasets):
                    logger.info("%s: per-device batch size by length bucket %s", ds.name, table[d])
        return TrainData(datasets, batch_sizes=sizes, seed=cfg.seed, world_size=self.world.world_size,
                         drop_last=cfg.drop_last, pad_id=self.model.tokenizer.special.pad,
                         shuffle_ratio=cfg.shuffle_ratio)

    def _check_group_size(self) -> None:
        cfg = self.cfg
        for d, ds in enumerate(self.data.datasets):
            if ds.group_size != 1:
                continue
            # configured sizes of the buckets this dataset fills (a dropped / short last batch aside)
            sizes = {self.data.per_device_batch(d, gb.bucket) for gb in self.data.plan(0) if gb.dataset == d} or {0}
            cross = cfg.negatives_cross_device and self.world.world_size > 1
            if not cfg.in_batch_negatives or (min(sizes) == 1 and not cross):
                why = "without in-batch negatives" if not cfg.in_batch_negatives else "with a batch of 1 query"
                raise ConfigError(
                    f"{ds.name}: group size 1 {why} leaves each query a single candidate (its positive): "
                    "softmax over one score is 1, the loss is log(1) = 0 and nothing is learned. Use "
                    "group_size >= 2 (hard negatives), in-batch negatives with batch_size >= 2, or "
                    "cross-device negatives."
                )
            logger.warning("%s: group size 1: no hard negatives, only in-batch negatives (the paper's "
                           "unsupervised stage); the loss needs batch_size >= 2 to mean anything", ds.name)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # as HF Trainer: no weight decay on biases and normalisation weights
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        kwargs = {"lr": self.cfg.learning_rate, "betas": tuple(self.cfg.adam_betas), "eps": self.cfg.adam_eps}
        try:  # one fused kernel per step: ~6× faster than foreach on CPU for the 250k-row embedding matrix
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # older torch / unsupported device or dtype
            return torch.optim.AdamW(groups, **kwargs)

    # ------------------------------------------------------------------ one micro-batch
    def compute_loss(self, batch: TrainBatch) -> LossOutput:
        """Encode a device batch and evaluate the objective at the current step."""
        cfg = self.cfg
        unified = cfg.trains_heads
        frozen = cfg.stage == "fix_encoder"
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else nullcontext())
        with amp:
            q = encode_reps(self.model, batch.q_ids, batch.q_mask, unified=unified,
                            sub_batch_size=cfg.sub_batch_size, frozen_encoder=frozen)
            p = encode_reps(self.model, batch.p_ids, batch.p_mask, unified=unified,
                            sub_batch_size=cfg.sub_batch_size, frozen_encoder=frozen)
        cross = cfg.negatives_cross_device and self.world.world_size > 1
        pad = self.model.tokenizer.special.pad
        return m3_loss(
            q, p, batch.group_size, self.loss_cfg,
            self_distill=unified and cfg.self_distill and self.step > cfg.self_distill_start_step,
            teacher_scores=batch.teacher,
            gather=(lambda r, h: dist_utils.gather_reps(r, h, pad)) if cross else None,
            gather_heads=tuple(cfg.cross_device_heads), rank=self.world.rank, world_size=self.world.world_size,
        )

    # ------------------------------------------------------------------ loop
    def _next_batch(self) -> tuple[TrainBatch, int, int]:
        if self.batch_index >= len(self.data.plan(self.epoch)):
            self.epoch += 1
            self.batch_index = 0
        epoch, index = self.epoch, self.batch_index
        batch = self.data.collate(epoch, index, self.world.rank)
        self.batch_index += 1
        return batch, epoch, index

    def train(self) -> TrainResult:
        """Run until ``total_steps``; returns the final step, output directory and the logged history."""
        cfg = self.cfg
        main = self.world.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.output_dir / "train_config.yaml", "w") as f:
                yaml.safe_dump(cfg.to_dict(), f, sort_keys=False, allow_unicode=True)
        self._truncate_metrics()
        if self.eval_fn is not None and cfg.eval_at_start and self.step == 0:
            self._evaluate()
        progress = _Progress(self.total_steps, self.step, enabled=main and cfg.progress)
        window: list[dict[str, Any]] = []
        try:
            while self.step < self.total_steps:
                record = self._train_step()
                window.append(record)
                if self.step % cfg.logging_steps == 0 or self.step == self.total_steps:
                    self._log(window)
                    window = []
                progress.update(self.step, record)
                if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
        finally:
            progress.close()
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"-{self.step}"):
            self.save_checkpoint()
        if main:
            self._save_model(self.output_dir)
            if cfg.plot:
                self._plot()
        dist_utils.barrier()
        return TrainResult(self.step, self.output_dir, self.last_checkpoint, self.history)

    def _train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        loss_sum, tokens, samples = 0.0, 0, 0
        for micro in range(cfg.grad_accum):
            batch, epoch, index = self._next_batch()
            batch = batch.to(self.device)
            out = self.compute_loss(batch)
            bad = not bool(torch.isfinite(out.loss.detach()))
            if dist_utils.any_rank(bad, self.device):
                self._fail(f"non-finite loss {float(out.loss.detach()):.6g} (parts {out.parts})" if bad
                           else "non-finite loss on another rank", micro, epoch, index, batch)
            if out.sparse_all_zero:
                self._warn_zero_sparse(batch)
            self.scaler.scale(out.backward / cfg.grad_accum).backward()
            loss_sum += float(out.loss.detach())
            for k, v in out.parts.items():
                sums[k] = sums.get(k, 0.0) + v
            tokens += batch.n_tokens
            samples += batch.q_ids.shape[0]
        dist_utils.average_gradients(self.trainable, self.world.world_size)
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(
                torch.stack([p.grad.detach().float().norm() for p in self.trainable if p.grad is not None])))
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            self._fail(f"non-finite gradient norm {grad_norm} (loss {loss_sum / cfg.grad_accum:.6g})",
                       cfg.grad_accum - 1, epoch, index, batch)
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        seconds = time.perf_counter() - t0
        n = cfg.grad_accum
        record = {"step": self.step, "epoch": epoch, "lr": lr, "loss": loss_sum / n,
                  **{k: v / n for k, v in sums.items()}, "grad_norm": grad_norm, "tokens": tokens,
                  "samples": samples, "seconds": seconds}
        return record

    def _fail(self, what: str, micro: int, epoch: int, index: int, batch: TrainBatch) -> None:
        where = (f"at step {self.step + 1} (micro-batch {micro + 1}/{self.cfg.grad_accum}, epoch {epoch}, "
                 f"batch {index} of the epoch, rank {self.world.rank}): {batch.where()}")
        ckpt = self.last_checkpoint or self.resume_dir
        msg = (f"{what} {where}. Training stopped before the optimizer step; the last checkpoint "
               f"({ckpt if ckpt else 'none written yet'}) is intact. Lower the learning rate, check these rows, "
               "or use fp32/bf16 instead of fp16.")
        if self.world.is_main:
            self._append_metrics({"step": self.step + 1, "error": msg})
        raise NonFiniteLossError(msg)

    def _warn_zero_sparse(self, batch: TrainBatch) -> None:
        self._zero_sparse_warned += 1
        n = self._zero_sparse_warned
        if n <= 5 or n & (n - 1) == 0:  # first few, then at powers of two
            logger.warning("step %d: every sparse weight of the batch is 0 (ReLU of the sparse head is off on all "
                           "tokens; lexical scores and their gradient are 0) — %s [%d such batches so far]",
                           self.step + 1, batch.where(), n)

    # ------------------------------------------------------------------ logging
    def _log(self, window: list[dict[str, Any]]) -> None:
        if not window:
            return
        seconds = sum(r["seconds"] for r in window)
        tokens = sum(r["tokens"] for r in window)
        rec: dict[str, Any] = {"step": window[-1]["step"], "epoch": window[-1]["epoch"], "lr": window[-1]["lr"]}
        for key in ("loss", *PART_NAMES, "grad_norm"):
            vals = [r[key] for r in window if key in r]
            if vals:
                rec[key] = sum(vals) / len(vals)
        rec.update(tokens=tokens, samples=sum(r["samples"] for r in window), seconds=round(seconds, 4),
                   tokens_per_s=tokens / seconds if seconds > 0 else 0.0)
        self.history.append(rec)
        if self.world.is_main:
            self._append_metrics(rec)

    def _append_metrics(self, rec: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()

    def _truncate_metrics(self) -> None:
        """On resume, drop log lines past the resumed step (a crashed run may have logged beyond it)."""
        path = self.output_dir / "metrics.jsonl"
        if not self.world.is_main or not path.is_file():
            return
        if self.step == 0 and self.resume_dir is None:
            path.unlink()
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= self.step and "error" not in rec:
                keep.append(line)
                (self.history if "loss" in rec else self.eval_history).append(rec)
        with atomic_write(path, "w") as f:
            f.write("".join(k + "\n" for k in keep))

    def _plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover
            logger.warning("matplotlib not installed: no loss plot")
            return
        hist = [h for h in self.history if "loss" in h]
        if not hist:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [h["step"] for h in hist]
        for key in ("loss", "dense", "sparse", "colbert", "ensemble"):
            if key in hist[0]:
                ax.plot(steps, [h.get(key, float("nan")) for h in hist], label=key, lw=2 if key == "loss" else 1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(f"m3embed train — stage {self.cfg.stage}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_write(self.output_dir / "loss.png", "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>``: the model (bge-m3 layout), optimizer, scheduler, data position, RNG."""
        final = self.output_dir / f"checkpoint-{self.step}"
        tmp = self.output_dir / f".checkpoint-{self.step}.tmp"
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist_utils.barrier()
        atomic_torch_save(_rng_state(), tmp / f"rng_state_{self.world.rank}.pt")
        if self.world.is_main:
            self._save_model(tmp)
            state = {
                "step": self.step, "epoch": self.epoch, "batch_index": self.batch_index,
                "total_steps": self.total_steps, "world_size": self.world.world_size,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "config": json.dumps(self.cfg.to_dict()),
            }
            atomic_torch_save(state, tmp / STATE_FILE)
        dist_utils.barrier()
        if self.world.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.output_dir)
            self._rotate()
        dist_utils.barrier()
        if self.eval_fn is not None:
            self._evaluate()
        self.last_checkpoint = final
        return final

    def _evaluate(self) -> None:
        """Run ``eval_fn`` on rank 0 (others wait) and log its numbers as ``eval/<name>``."""
        if self.world.is_main:
            scores = self.eval_fn(self.model, self.step) or {}
            self._train_mode()
            rec = {f"eval/{k}": v for k, v in scores.items()}
            if rec:
                self._append_metrics({"step": self.step, **rec})
                self.eval_history.append({"step": self.step, **rec})
                logger.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in rec.items()))
        dist_utils.barrier()

    def _save_model(self, directory: Path) -> None:
        from transformers.utils import logging as hf_logging

        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint is noise
        try:
            self.model.save_pretrained(directory, safe_serialization=self.cfg.safe_serialization)
        finally:
            if was_on:
                hf_logging.enable_progress_bar()

    def _rotate(self) -> None:
        limit = self.cfg.save_total_limit
        if not limit:
            return
        found = sorted((int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _CKPT_RE.match(p.name)))
        for _, p in found[:-limit]:
            shutil.rmtree(p, ignore_errors=True)

    def _load_state(self, path: Path) -> None:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if state["world_size"] != self.world.world_size:
            raise ConfigError(f"{path}: saved with {state['world_size']} processes, resuming with "
                              f"{self.world.world_size}: the data order would differ (use the same number)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_index = state["step"], state["epoch"], state["batch_index"]
        if state["total_steps"] != self.total_steps:
            logger.warning("resuming at step %d with %d total steps (the checkpoint planned %d): the learning-rate "
                           "schedule changes", self.step, self.total_steps, state["total_steps"])
        rng_file = path / f"rng_state_{self.world.rank}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
        self.last_checkpoint = path
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_index)


# ---------------------------------------------------------------------------- helpers
def _harness_eval(cfg: TrainConfig) -> Callable[[M3Model, int], dict[str, float]]:
    """``eval_fn`` over ``cfg.eval_data`` with the eval harness: mean of each metric per search mode."""
    from ..eval import evaluate

    def run(model: M3Model, step: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            res = evaluate(cfg.eval_data, cfg.eval_split, model, modes=cfg.eval_modes, bm25=False,
                           max_query_length=cfg.query_max_len, max_passage_length=cfg.passage_max_len,
                           show_progress=False)
        return {f"{s.key}/{m}": float(v) for s in res.systems for m, v in s.metrics.mean.items()}

    return run


def _pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "no":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None  # bf16 autocast is slower than fp32 on CPUs without AMX (PERF-NOTES)
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("config: mixed_precision: fp16 needs a GPU (use bf16 or no on CPU)")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _device_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    import psutil

    return psutil.virtual_memory().total / 2**30 / 2  # leave half of the RAM to everything else


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)  # never exactly 0: the first step already moves
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": json.dumps(random.getstate()),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Progress:
    """A rich progress bar with the loss per head (rank 0 only)."""

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), console=console, transient=False)
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, rec: dict[str, Any]) -> None:
        if self.bar is None:
            return
        short = {"dense": "d", "sparse": "s", "colbert": "c", "ensemble": "e"}
        heads = " ".join(f"{a}={rec[k]:.3f}" for k, a in short.items() if k in rec)
        tps = rec["tokens"] / rec["seconds"] if rec["seconds"] > 0 else 0
        self.bar.update(self.task, completed=step, info=f"loss={rec['loss']:.4f} {heads} {tps:,.0f} tok/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
