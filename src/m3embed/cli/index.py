"""``m3embed index`` (build an index from a corpus) and ``m3embed search`` (query it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .app import MODEL_ENV, app, console, error, load_model, parse_weights

MULTIVEC = ("fp16", "int8", "residual", "fp32", "none")
DENSE = ("flat", "hnsw", "ivf")
SPARSE = ("float32", "uint8", "uint16")


@app.command("index")
def index_cmd(
    corpus: Annotated[Path, typer.Argument(
        help="corpus.jsonl: one {'_id'|'id', 'text', 'title'?, 'metadata'?} per line")],
    out_dir: Annotated[Path, typer.Argument(help="Index directory to create (must not exist or be empty)")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help=f"Checkpoint dir or hub id (env {MODEL_ENV})")
    ] = None,
    multivec: Annotated[str, typer.Option(help=f"Token-vector store: {' | '.join(MULTIVEC)}")] = "fp16",
    dense: Annotated[str, typer.Option(help=f"Dense index: {' | '.join(DENSE)}")] = "flat",
    sparse_dtype: Annotated[str, typer.Option(help=f"Sparse impacts: {' | '.join(SPARSE)}")] = "float32",
    nbits: Annotated[int, typer.Option(help="Residual codec: bits per dimension")] = 2,
    centroids: Annotated[int, typer.Option(help="Residual codec: k-means centroids")] = 1024,
    codec_sample: Annotated[int, typer.Option(
        help="Residual codec: documents drawn from the whole corpus to fit the codebook (0: the first chunk)")] = 1024,
    max_length: Annotated[int, typer.Option(help="Max tokens per passage, specials included")] = 512,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass")] = 32,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, … (default cpu)")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision (GPU)")] = False,
    store_text: Annotated[bool, typer.Option("--store-text/--no-store-text", help="Keep passage texts")] = True,
) -> None:
    """Encode a corpus and write a dense + sparse + multi-vector index."""
    from ..index import M3Index

    for name, value, allowed in (("--multivec", multivec, MULTIVEC), ("--dense", dense, DENSE),
                                 ("--sparse-dtype", sparse_dtype, SPARSE)):
        if value not in allowed:
            raise typer.BadParameter(f"{value!r}: expected one of {', '.join(allowed)}", param_hint=name)
    if not corpus.is_file():
        error(f"{corpus}: no such corpus file")
        raise typer.Exit(2)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        error(f"{out_dir}: exists and is not an empty directory")
        raise typer.Exit(2)
    m = load_model(model, device, fp16)
    start = time.perf_counter()
    try:
        idx = M3Index.build(corpus, m, out_dir, batch_size=batch_size, max_length=max_length, show_progress=True,
                            multivec=multivec, dense=dense, sparse_dtype=sparse_dtype, nbits=nbits,
                            centroids=centroids, store_text=store_text, codec_sample=codec_sample)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as e:
        error(e)
        raise typer.Exit(2) from None
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    console.print(f"indexed {len(idx)} passages in {seconds:.1f} s ({len(idx) / max(seconds, 1e-9):,.1f}/s), "
                  f"{size / 2**20:,.1f} MiB → {out_dir}")
    idx.close()


@app.command("search")
def search_cmd(
    index_dir: Annotated[Path, typer.Argument(help="Index directory written by `m3embed index`")],
    query: Annotated[list[str], typer.Argument(help="Query text (several: one table each)")],
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query")] = 10,
    mode: Annotated[str | None, typer.Option(
        help="dense | sparse | multivec | dense+sparse | all | rrf (default: all; dense+sparse without token vectors)"
    )] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Checkpoint (default: the one that built the index)")
    ] = None,
    weights: Annotated[str | None, typer.Option(
        help="w_dense,w_sparse,w_colbert (default: the index model's hybrid weights, the paper's 1,0.3,1 "
             "unless its checkpoint has m3embed.json)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, … (default cpu)")] = None,
    snippet: Annotated[int, typer.Option(help="Characters of passage text to show")] = 80,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check file checksums on open")] = True,
) -> None:
    """Search an index and print a table of rank, id, score and a text snippet."""
    from rich.table import Table

    from ..index import MODES, IndexCorruptError, M3Index, ModelMismatchError

    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"{mode!r}: expected one of {', '.join(MODES)}", param_hint="--mode")
    w = parse_weights(weights) if weights is not None else None
    try:
        idx = M3Index.open(index_dir, verify=verify)
    except (IndexCorruptError, FileNotFoundError) as e:
        error(e)
        raise typer.Exit(2) from None
    if mode is None:
        mode = "all" if idx.multivec is not None else "dense+sparse"
    name = model or idx.fingerprint.get("name")
    if not name:
        error("the index does not record its model: pass --model")
        raise typer.Exit(2)
    m = load_model(name, device, False)
    try:
        results = idx.search(query, k=k, mode=mode, model=m, weights=w)
    except (ValueError, TypeError) as e:
        error(e)
        raise typer.Exit(3 if isinstance(e, ModelMismatchError) else 2) from None
    from rich.console import Console

    out = Console()
    for q, hits in zip(query, results, strict=True):
        table = Table(title=f"{q}  [dim]({mode}, top {k})[/dim]", title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("id")
        table.add_column("score", justify="right")
        table.add_column("text")
        for r, h in enumerate(hits, start=1):
            text = (h.text or "").replace("\n", " ")
            table.add_row(str(r), h.id, f"{h.score:.4f}", text[:snippet] + ("…" if len(text) > snippet else ""))
        out.print(table)
