"""``m3embed encode`` and ``m3embed random-checkpoint``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .app import MODEL_ENV, app, console, error, load_model


@app.command()
def encode(
    input: Annotated[Path, typer.Argument(
        help=".txt (one text per line) or .jsonl (a 'text' field per line); --engine ray: a .jsonl / .parquet "
             "file, a directory or a glob of them")],
    output: Annotated[Path, typer.Argument(
        help="Output .npz (arrays) or .jsonl (one object per text); --engine ray: a directory")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help=f"Checkpoint dir or hub id (env {MODEL_ENV})")
    ] = None,
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
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray workers, resumable)")] = "local",
    address: Annotated[str | None, typer.Option(
        help="--engine ray: 'auto' or HOST:PORT joins a running cluster; default: start a local one")] = None,
    workers: Annotated[int | None, typer.Option(help="--engine ray: model replicas (default: fill cluster)")] = None,
    threads_per_worker: Annotated[int | None, typer.Option(help="--engine ray: torch threads per CPU worker")] = None,
    part_rows: Annotated[int, typer.Option(help="--engine ray: records per unit of work / output file")] = 2048,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="--engine ray: discard outputs of other settings in OUTPUT")] = False,
) -> None:
    """Encode a file of texts into dense / sparse / ColBERT representations."""
    from ..io import read_texts, write_jsonl, write_npz

    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"{engine!r}: expected local or ray", param_hint="--engine")
    if engine == "ray":
        from .encode_ray import encode_with_ray

        encode_with_ray(input, output, model=model, address=address, workers=workers,
                        threads_per_worker=threads_per_worker, part_rows=part_rows, overwrite=overwrite,
                        max_length=max_length, batch_size=batch_size, device=device, fp16=fp16, dense=dense,
                        sparse=sparse, colbert=colbert, mcls=mcls, truncate=truncate, field=field)
        return
    if output.suffix not in (".npz", ".jsonl"):
        raise typer.BadParameter(f"{output}: output must end in .npz or .jsonl", param_hint="OUTPUT")
    try:
        texts = read_texts(input, field=field)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as e:
        error(e)
        raise typer.Exit(2) from None
    m = load_model(model, device, fp16)
    start = time.perf_counter()
    with Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("encode", total=len(texts))
        try:
            out = m.encode(texts, batch_size=batch_size, max_length=max_length, return_dense=dense,
                           return_sparse=sparse, return_colbert=colbert, mcls=mcls, truncation=truncate,
                           progress=lambda k: bar.advance(task, k))
        except ValueError as e:
            error(e)
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
    from ..testing import build_random_checkpoint

    build_random_checkpoint(out_dir, tokenizer, layers=layers, hidden=hidden, heads=heads, ffn=4 * hidden,
                            max_positions=max_positions, seed=seed)
    console.print(f"wrote {out_dir}")
