"""``m3embed eval``: the paper's table (BM25 and every search mode) on a BEIR-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import MODEL_ENV, app, console, error, load_model, parse_weights


def _parse_modes(value: str) -> list[str]:
    from ..eval.results import MODEL_MODES

    if value.strip().lower() in ("", "none"):
        return []
    modes = [m.strip().lower() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODEL_MODES]
    if bad:
        raise typer.BadParameter(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODEL_MODES)} or 'none'",
                                 param_hint="--modes")
    return modes


@app.command("eval")
def eval_command(
    dataset_dir: Annotated[Path, typer.Argument(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")],
    split: Annotated[str, typer.Option(help="Qrels file qrels/<split>.tsv selecting the queries")] = "test",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help=f"Checkpoint dir or hub id (env {MODEL_ENV})")
    ] = None,
    modes: Annotated[str, typer.Option(help="Comma-separated search modes, or 'none' (BM25 only)")] = (
        "dense,sparse,multivec,dense+sparse,all,rrf"),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report directory (default .cache/eval/<name>_<split>)")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Documents retrieved per query")] = 100,
    max_query_length: Annotated[int, typer.Option(help="Max query tokens, specials included")] = 512,
    max_passage_length: Annotated[int, typer.Option(help="Max passage tokens, specials included")] = 512,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass")] = 32,
    mcls: Annotated[bool, typer.Option("--mcls", help="Multiple [CLS] for passages (long documents)")] = False,
    bm25: Annotated[bool, typer.Option("--bm25/--no-bm25", help="Add the BM25 baseline (XLM-R tokens)")] = True,
    bm25_k1: Annotated[float, typer.Option(help="BM25 k1 (1.5 as BASELINES.md; Pyserini uses 0.9)")] = 1.5,
    bm25_b: Annotated[float, typer.Option(help="BM25 b (0.75 as BASELINES.md; Pyserini uses 0.4)")] = 0.75,
    multivec: Annotated[str | None, typer.Option(
        help="Token-vector store of the index: fp16 (index default), fp32, int8, residual")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Fusion weights 'dense,sparse,colbert' (default: the model's hybrid weights, "
             "the paper's 1,0.3,1 unless its checkpoint has m3embed.json)")] = None,
    save_runs: Annotated[bool, typer.Option("--save-runs", help="Also write TREC run files under OUT/runs/")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, … (default cpu)")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half precision (GPU)")] = False,
    precision: Annotated[str | None, typer.Option(
        help="CPU fast path: fp32 (same math, fused kernels), bf16 or int8 (approximate; see m3embed.accel)")] = None,
) -> None:
    """Evaluate BM25 and every search mode on one split; write a markdown table, a JSON file and a plot."""
    from ..eval.datasets import load_beir
    from ..eval.run import evaluate

    mode_list = _parse_modes(modes)
    w = parse_weights(weights) if weights else None
    if not mode_list and not bm25:
        raise typer.BadParameter("nothing to evaluate: --modes none together with --no-bm25", param_hint="--modes")
    try:
        ds = load_beir(dataset_dir, split)
    except (ValueError, FileNotFoundError) as e:
        error(e)
        raise typer.Exit(2) from None
    m = load_model(model, device, fp16, precision=precision) if mode_list else None
    out_dir = out or Path(".cache") / "eval" / f"{ds.name.replace('/', '_')}_{split}"
    console.print(f"{ds.name} ({split}): {len(ds.corpus)} docs, {len(ds.queries)} queries"
                  + (f", languages {' '.join(ds.languages)}" if ds.languages else ""))
    try:
        res = evaluate(ds, split, m, modes=mode_list, k=k, max_query_length=max_query_length,
                       max_passage_length=max_passage_length, batch_size=batch_size, out_dir=out_dir, mcls=mcls,
                       bm25=bm25, bm25_k1=bm25_k1, bm25_b=bm25_b, save_runs=save_runs,
                       index_options={"multivec": multivec} if multivec else None, weights=w)
    except (ValueError, RuntimeError) as e:
        error(e)
        raise typer.Exit(2) from None

    table = Table(title=f"{ds.name} ({split})")
    table.add_column("System")
    for metric in res.metrics:
        table.add_column(metric, justify="right")
    table.add_column("search s", justify="right")
    for s in res.systems:
        table.add_row(s.label, *(f"{s.metrics.mean[x]:.4f}" for x in res.metrics), f"{s.search_seconds:.2f}")
    console.print(table)
    if len(res.languages) > 1:  # transposed, so that 11 languages still fit a terminal
        by_lang = Table(title="nDCG@10 per query language")
        by_lang.add_column("lang")
        for s in res.systems:
            by_lang.add_column(s.label, justify="right")
        for lang in res.languages:
            by_lang.add_row(lang, *(f"{s.metrics.per_lang[lang]['nDCG@10']:.4f}" for s in res.systems))
        console.print(by_lang)
    for kind, path in res.files.items():
        console.print(f"{kind}: {path}", soft_wrap=True, highlight=False)
