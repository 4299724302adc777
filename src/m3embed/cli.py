"""Command line: ``m3embed encode`` (more commands arrive with the index and training)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(add_completion=False, no_args_is_help=True, help="BGE M3 embeddings: dense, sparse, multi-vector.")
console = Console(stderr=True)

MODEL_ENV = "M3EMBED_MODEL"


def _error(e: object) -> None:
    # soft_wrap: an error naming a long path must stay on one line to be copy-pasted and grepped
    console.print(f"[red]error:[/red] {e}", soft_wrap=True, markup=True, highlight=False)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    # the truncation count is worth showing even without -v
    logging.getLogger("m3embed.tokenize").setLevel(logging.INFO)


def _load_model(name: str | None, device: str | None, fp16: bool, fresh_heads: bool = False):
    from .checkpoint import CheckpointError
    from .model import M3Model

    name = name or os.environ.get(MODEL_ENV)
    if not name:
        raise typer.BadParameter(f"no model given: pass --model DIR_OR_HUB_ID or set {MODEL_ENV}", param_hint="--model")
    dtype = "fp16" if fp16 else None
    if fp16 and (device or "cpu").startswith("cpu"):
        raise typer.BadParameter("--fp16 needs a GPU device (fp16 on these CPUs is slow and lossy)", param_hint="--fp16")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise on a CLI
    try:
        return M3Model.from_pretrained(name, device=device, dtype=dtype, fresh_heads=fresh_heads)
    except (CheckpointError, FileNotFoundError) as e:
        _error(e)
        raise typer.Exit(2) from None


@app.command()
def encode(
    input: Annotated[Path, typer.Argument(help=".txt (one text per line) or .jsonl (a 'text' field per line)")],
    output: Annotated[Path, typer.Argument(help="Output .npz (arrays) or .jsonl (one object per text)")],
    model: Annotated[str | None, typer.Option("--model", "-m", help=f"Checkpoint dir or hub id (env {MODEL_ENV})")] = None,
    max_length: Annotated[int, typer.Option(help="Max tokens per text, specials included")] = 512,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass")] = 32,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, … (default cpu)")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision (GPU)")] = False,
    dense: Annotated[bool, typer.Option("--dense/--no-dense", help="Dense vectors")] = True,
    sparse: Annotated[bool, typer.Option("--sparse/--no-sparse", help="Lexical weights")] = True,
    colbert: Annotated[bool, typer.Option("--colbert/--no-colbert", help="ColBERT vectors")] = False,
    mcls: Annotated[bool, typer.Option("--mcls", help="Multiple [CLS] every 256 tokens (long inputs)")] = False,
    truncate: Annotated[bool, typer.Option("--truncate/--no-truncate", help="Cut texts over --max-length")] = True,
    field: Annotated[str, typer.Option(help="JSON field holding the text")] = "text",
) -> None:
    """Encode a file of texts into dense / sparse / ColBERT representations."""
    from .io import read_texts, write_jsonl, write_npz

    if output.suffix not in (".npz", ".jsonl"):
        raise typer.BadParameter(f"{output}: output must end in .npz or .jsonl", param_hint="OUTPUT")
    try:
        texts = read_texts(input, field=field)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as e:
        _error(e)
        raise typer.Exit(2) from None
    m = _load_model(model, device, fp16)
    start = time.perf_counter()
    with Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("encode", total=len(texts))
        try:
            out = m.encode(texts, batch_size=batch_size, max_length=max_length, return_dense=dense,
                           return_sparse=sparse, return_colbert=colbert, mcls=mcls, truncation=truncate,
                           progress=lambda k: bar.advance(task, k))
        except ValueError as e:
            _error(e)
            raise typer.Exit(2) from None
    seconds = time.perf_counter() - start
    (write_npz if output.suffix == ".npz" else write_jsonl)(out, output)
    n_tok = int(out.n_tokens.sum()) if out.n_tokens is not None else 0
    console.print(f"encoded {len(texts)} texts ({n_tok} tokens) in {seconds:.1f} s "
                  f"({n_tok / max(seconds, 1e-9):,.0f} tokens/s) → {output}")


@app.command("random-checkpoint")
def random_checkpoint(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write")],
    tokenizer: Annotated[Path, typer.Option(help="Directory with an XLM-R tokenizer.json")],
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    max_positions: int = 8194,
    seed: int = 0,
) -> None:
    """Write a small seeded random checkpoint in the bge-m3 layout (for smoke tests and benchmarks)."""
    from .testing import build_random_checkpoint

    build_random_checkpoint(out_dir, tokenizer, layers=layers, hidden=hidden, heads=heads, ffn=4 * hidden,
                            max_positions=max_positions, seed=seed)
    console.print(f"wrote {out_dir}")


if __name__ == "__main__":  # pragma: no cover
    app()
