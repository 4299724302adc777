"""Reports of an evaluation: a markdown table, a JSON file and a bar chart (PNG).

The plot uses matplotlib's object API with the Agg canvas, so it never touches the global
backend (no display needed, no side effect on a caller's pyplot).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import atomic_write
from .results import EvalResults

LANG_METRIC = "nDCG@10"  # the metric broken down per language


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def render_markdown(results: EvalResults) -> str:
    """The table: one row per system; metric columns, then per-language nDCG@10 when queries carry >1 language."""
    ds = results.dataset
    langs = results.languages if len(results.languages) > 1 else []
    head = ["System", *results.metrics, *(f"{LANG_METRIC} {lang}" for lang in langs)]
    lines = [
        f"### {ds.get('name', '?')} ({ds.get('split', '?')}): "
        f"{ds.get('docs', '?')} docs, {ds.get('queries', '?')} queries",
        "",
    ]
    if results.model:
        lines += [f"Model: `{results.model.get('source', '?')}`", ""]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for s in results.systems:
        cells = [s.label, *(_fmt(s.metrics.mean[m]) for m in results.metrics)]
        cells += [_fmt(s.metrics.per_lang.get(lang, {}).get(LANG_METRIC, float("nan"))) for lang in langs]
        lines.append("| " + " | ".join(cells) + " |")
    cfg = results.config
    lines += ["", f"k={cfg.get('k')}, max query/passage length {cfg.get('max_query_length')}/"
                  f"{cfg.get('max_passage_length')}, mcls={cfg.get('mcls')}, BM25 k1={cfg.get('bm25_k1')} "
                  f"b={cfg.get('bm25_b')} on XLM-R tokens."
                  + (f" Fusion weights (dense, sparse, ColBERT): {tuple(w)}." if (w := cfg.get("weights")) else "")]
    return "\n".join(lines) + "\n"


def write_markdown(results: EvalResults, path: str | Path) -> Path:
    with atomic_write(path, "w") as f:
        f.write(render_markdown(results))
    return Path(path)


def write_json(results: EvalResults, path: str | Path, *, per_query: bool = True) -> Path:
    with atomic_write(path, "w") as f:
        json.dump(results.to_dict(per_query=per_query), f, ensure_ascii=False, indent=1, allow_nan=False)
        f.write("\n")
    return Path(path)


def write_plot(results: EvalResults, path: str | Path) -> Path:
    """Grouped bars of each metric per system; a second panel of nDCG@10 per language when there are several."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    langs = results.languages if len(results.languages) > 1 else []
    systems = results.systems
    n_panels = 2 if langs else 1
    fig = Figure(figsize=(max(7.0, 1.1 * len(systems) + 3), 4.2 * n_panels), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_panels, 1, squeeze=False)[:, 0]

    ax = axes[0]
    width = 0.8 / max(len(results.metrics), 1)
    for j, m in enumerate(results.metrics):
        xs = [i + (j - (len(results.metrics) - 1) / 2) * width for i in range(len(systems))]
        vals = [s.metrics.mean[m] for s in systems]
        bars = ax.bar(xs, vals, width, label=m)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1, rotation=90)
    ax.set_xticks(range(len(systems)), [s.label for s in systems])
    ax.set_ylim(0, 1.3)  # headroom above 1.0 for the value labels and the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.set_title(f"{results.dataset.get('name', '')} ({results.dataset.get('split', '')})")
    ax.legend(loc="upper center", ncols=len(results.metrics), fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    if langs:
        ax = axes[1]
        width = 0.8 / len(systems)
        for j, s in enumerate(systems):
            xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(langs))]
            ax.bar(xs, [s.metrics.per_lang.get(lang, {}).get(LANG_METRIC, 0.0) for lang in langs], width, label=s.label)
        ax.set_xticks(range(len(langs)), langs)
        ax.set_ylim(0, 1.2)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_ylabel(f"{LANG_METRIC} per query language")
        ax.legend(loc="upper center", ncols=min(len(systems), 7), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)


def write_reports(results: EvalResults, out_dir: str | Path, *, stem: str = "eval") -> dict[str, str]:
    """Write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` into ``out_dir``; returns kind → path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": str(out / f"{stem}.md"), "json": str(out / f"{stem}.json"), "plot": str(out / f"{stem}.png")}
    results.files.update(files)  # before the JSON, so that it lists its siblings
    write_markdown(results, files["markdown"])
    write_plot(results, files["plot"])
    write_json(results, files["json"])
    return files
