"""``m3embed train CONFIG.yaml [--set KEY=VALUE …]`` — one process, or one per device under torchrun."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from .app import app, console, error


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (options of m3embed.train.TrainConfig)")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override an option: KEY=VALUE, value parsed as YAML (repeatable)")] = None,
    model: Annotated[str | None, typer.Option(help="Checkpoint dir or hub id (overrides the config)")] = None,
    train_data: Annotated[list[str] | None, typer.Option(help="jsonl / jsonl.gz file (repeatable)")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where checkpoints, logs and the model go")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps")] = None,
    resume: Annotated[str | None, typer.Option(help="A checkpoint directory, or 'latest'")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: per-rank GPU, else CPU)")] = None,
) -> None:
    """Fine-tune an M3 model (dense / unified / fix_encoder stages) on jsonl query-positive-negative data.

    Multi-GPU / multi-process: `torchrun --nproc-per-node N -m m3embed.cli train CONFIG.yaml`
    (NCCL on GPUs, gloo on CPU).
    """
    from ..checkpoint import CheckpointError
    from ..train import ConfigError, DataError, DistributedError, M3Trainer, NonFiniteLossError, TrainConfig
    from ..train.config import parse_override

    rank = int(os.environ.get("RANK", "0"))
    logging.getLogger("m3embed.train").setLevel(logging.INFO if rank == 0 else logging.ERROR)
    logging.getLogger("m3embed.tokenize").setLevel(logging.WARNING)  # truncation counts of the whole data are noise
    try:
        values = dict(parse_override(o) for o in overrides or [])
        for key, val in (("model", model), ("train_data", train_data), ("output_dir", output_dir),
                         ("max_steps", max_steps), ("resume_from", resume), ("device", device)):
            if val is not None:
                values[key] = val
        if rank != 0:
            values["progress"] = False
        cfg = TrainConfig.from_yaml(config, values)
        trainer = M3Trainer(cfg)
        if rank == 0:
            console.print(f"training {trainer.total_steps} steps ({trainer.steps_per_epoch} per epoch) on "
                          f"{trainer.device} × {trainer.world.world_size} process(es), stage {cfg.stage}")
        result = trainer.train()
    except (ConfigError, DataError, CheckpointError, DistributedError, FileNotFoundError) as e:
        error(e)
        raise typer.Exit(2) from None
    except NonFiniteLossError as e:
        error(e)
        raise typer.Exit(3) from None
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        last = result.history[-1] if result.history else {}
        console.print(f"done: step {result.step}, loss {last.get('loss', float('nan')):.4f}; model in "
                      f"{result.output_dir}, metrics in {result.output_dir / 'metrics.jsonl'}")
