"""The paper's table over several datasets: nDCG@10 of BM25 and every search mode, one row per dataset.

Runs :func:`m3embed.eval.evaluate` on each BEIR folder with one loaded model (default
``m3embed-small``), keeps each dataset's full report (``eval.md`` / ``eval.json`` / ``eval.png``)
under ``--out/<name>``, and writes the summary table (``table.md``, ``table.json``) there too.

    python benchmarks/paper_table.py                    # xquad_r, every language (same-language qrels)
    python benchmarks/paper_table.py --datasets ../shared/data/qmsum_longdoc --max-passage-length 8192
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

XQUAD_LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")
COLUMNS = (("bm25", "BM25"), ("dense", "Dense"), ("sparse", "Sparse"), ("multivec", "Multi-vec"),
           ("dense+sparse", "Dense+Sparse"), ("all", "All"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = REPO.parent / "shared" / "data"
    ap.add_argument("--datasets", nargs="*", default=[str(shared / "xquad_r/paragraph" / lang) for lang in XQUAD_LANGS])
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="m3embed-small")
    ap.add_argument("--max-passage-length", type=int, default=512)
    ap.add_argument("--max-query-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--mcls", action="store_true")
    ap.add_argument("--precision", default=None, help="CPU fast path: fp32, bf16 or int8 (default: exact)")
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "paper_table")
    args = ap.parse_args()

    from m3embed import M3Model
    from m3embed.eval import evaluate

    model = M3Model.from_pretrained(args.model, precision=args.precision) if args.precision else \
        M3Model.from_pretrained(args.model)
    rows = []
    for d in args.datasets:
        name = f"{Path(d).parents[1].name}_{Path(d).name}" if Path(d).parent.name == "paragraph" else Path(d).name
        t = time.perf_counter()
        res = evaluate(d, args.split, model, max_passage_length=args.max_passage_length,
                       max_query_length=args.max_query_length, batch_size=args.batch_size, mcls=args.mcls,
                       out_dir=args.out / name, show_progress=False)
        scores = {s.key: s.metrics.mean["nDCG@10"] for s in res.systems}
        rows.append({"dataset": name, "docs": res.dataset.get("docs"), "queries": res.dataset.get("queries"),
                     "ndcg@10": scores, "seconds": time.perf_counter() - t})
        print(f"{name}: " + "  ".join(f"{label} {scores.get(key, float('nan')):.4f}" for key, label in COLUMNS),
              flush=True)
    lines = [f"nDCG@10, model `{args.model}`, split {args.split}, max passage length {args.max_passage_length}"
             f"{', MCLS' if args.mcls else ''}", "",
             "| Dataset | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['dataset']} | " + " | ".join(f"{r['ndcg@10'].get(k, float('nan')):.4f}" for k, _ in COLUMNS)
                     + " |")
    if len(rows) > 1:
        avg = {k: sum(r["ndcg@10"].get(k, 0.0) for r in rows) / len(rows) for k, _ in COLUMNS}
        lines.append("| **average** | " + " | ".join(f"**{avg[k]:.4f}**" for k, _ in COLUMNS) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "table.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                     "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
