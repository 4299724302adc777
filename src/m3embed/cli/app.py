"""The typer app and what every command shares: console, errors, model loading."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(add_completion=False, no_args_is_help=True, help="BGE M3 embeddings: dense, sparse, multi-vector.")
console = Console(stderr=True)

MODEL_ENV = "M3EMBED_MODEL"
DEFAULT_MODEL = "m3embed-small"


def parse_weights(value: str) -> tuple[float, float, float]:
    """``--weights 'dense,sparse,colbert'`` → three floats, checked as search checks them (else ``BadParameter``)."""
    from ..scoring import check_hybrid_weights

    try:
        return check_hybrid_weights(value.split(","))
    except ValueError:
        raise typer.BadParameter(f"{value!r}: expected three numbers 'dense,sparse,colbert' (non-negative, not all 0), "
                                 "e.g. 1,0.3,1", param_hint="--weights") from None


def error(e: object) -> None:
    # soft_wrap: an error naming a long path must stay on one line to be copy-pasted and grepped
    console.print(f"[red]error:[/red] {e}", soft_wrap=True, markup=True, highlight=False)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    # the truncation count is worth showing even without -v
    logging.getLogger("m3embed.tokenize").setLevel(logging.INFO)


def load_model(name: str | None, device: str | None, fp16: bool, fresh_heads: bool = False,
               precision: str | None = None):
    from ..checkpoint import CheckpointError
    from ..model import M3Model

    # the trained default model runs offline; BAAI/bge-m3 only when named (needs the hub)
    name = name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    dtype = "fp16" if fp16 else None
    if fp16 and (device or "cpu").startswith("cpu"):
        raise typer.BadParameter("--fp16 needs a GPU device (fp16 on these CPUs is slow and lossy)",
                                 param_hint="--fp16")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise on a CLI
    try:
        model = M3Model.from_pretrained(name, device=device, dtype=dtype, fresh_heads=fresh_heads)
    except (CheckpointError, FileNotFoundError) as e:
        error(e)
        raise typer.Exit(2) from None
    if precision is not None:
        try:
            model.optimize(precision)  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as e:
            raise typer.BadParameter(str(e), param_hint="--precision") from None
    return model
