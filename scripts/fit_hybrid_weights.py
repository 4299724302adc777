"""Fit the ``all`` mode's hybrid weights of a model on dev sets held out of its training data.

The paper's ``(w_dense, w_sparse, w_colbert) = (1, 0.3, 1)`` suit bge-m3's score scales. A smaller
model's three scores have other scales and strengths, so its best fusion differs; this script
measures that on data the model never trained on and no evaluation set contains:

* ``short`` — rows of ``train_mix/train_short_docs`` outside the 10,000-row subset that trained
  m3embed-small (``scripts/device_pack.py``'s block selection, re-drawn here with its seed), and
  whose positive passage is not in that subset: ``--per-source`` queries from each source; the
  corpus is their positives and BM25 hard negatives (same-language retrieval, 16+ languages).
* ``xling`` — English message strings of ``gettext_parallel_train`` with their translations into
  the XQuAD-R languages, from rows outside the 40,000 training pairs and never trained as that
  (English, language) pair: an English query, its translations relevant, every other query's
  translations the distractors (cross-lingual).

Each set is encoded once; ``M3Index.search(mode="all", k=400)`` returns every candidate (dense
top-200 ∪ sparse top-200) with its three exact scores, and each grid point re-ranks them. Writes
nDCG@10 per grid point of each set to ``<out>.<set>.json``, then prints and writes (``<out>.json``,
``<out>.md``) the best weights by the mean over the sets found there.

Usage: python scripts/fit_hybrid_weights.py [--model m3embed-small] [--sets short,xling] --out PREFIX
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from m3embed import M3Model
from m3embed.eval.datasets import Document, RetrievalDataset
from m3embed.eval.metrics import evaluate_run
from m3embed.index import M3Index
from m3embed.scoring import PAPER_WEIGHTS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# all_languages minus en (the query side), as gettext names them
XQ_LANGS = ("ar", "de", "el", "es", "hi", "ru", "th", "tr", "vi", "zh_CN")
GRID_DENSE = [round(float(x), 2) for x in np.arange(0.0, 1.01, 0.1)]
GRID_SPARSE = [round(float(x), 2) for x in np.arange(0.0, 0.61, 0.05)]


def _rows(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def _training_subset(rows: list[str], n: int, seed: int, block: int = 200) -> set[int]:
    """Indices ``scripts/device_pack.py`` packed for training (its ``subset_jsonl``, same draw)."""
    starts = sorted(random.Random(seed).sample(range(0, len(rows), block), -(-n // block)))
    return set([i for s in starts for i in range(s, min(s + block, len(rows)))][:n])


def _doc_id(text: str) -> str:
    return "d" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def short_dev(per_source: int, seed: int) -> RetrievalDataset:
    rows = _rows(SHARED / "train_mix/train_short_docs.jsonl.gz")
    used = _training_subset(rows, 10000, 1)
    seen = set()
    for i in used:
        r = json.loads(rows[i])
        seen.update([*r["pos"], *r.get("neg", [])])
    by_source: dict[str, list[dict]] = defaultdict(list)
    for i, line in enumerate(rows):
        if i in used:
            continue
        r = json.loads(line)
        if r["pos"][0] not in seen:
            by_source[r["source"]].append(r)
    rng = random.Random(seed)
    corpus: dict[str, Document] = {}
    queries, qrels, qlang = {}, {}, {}
    for source in sorted(by_source):
        cand = by_source[source]
        for j, r in enumerate(rng.sample(cand, min(per_source, len(cand)))):
            qid = f"{source}-{j}"
            queries[qid] = r["query"]
            qlang[qid] = r["lang"]
            qrels[qid] = {_doc_id(p): 1 for p in r["pos"]}
            for t in [*r["pos"], *r.get("neg", [])]:
                corpus.setdefault(_doc_id(t), Document(_doc_id(t), t, lang=r["lang"]))
    return RetrievalDataset("train_mix-heldout", "dev", list(corpus.values()), queries, qrels, qlang)


def xling_dev(n_queries: int, seed: int, langs: tuple[str, ...] = XQ_LANGS) -> RetrievalDataset:
    rows = _rows(SHARED / "gettext_parallel_train/pairs.jsonl.gz")
    used = _training_subset(rows, 40000, 3)
    trained = {(r["query"], r["lang"]) for r in (json.loads(rows[i]) for i in used)}
    trans: dict[str, dict[str, str]] = defaultdict(dict)
    for i, line in enumerate(rows):
        if i in used:
            continue
        r = json.loads(line)
        if r.get("query_lang") == "en" and r["lang"] in langs and (r["query"], r["lang"]) not in trained:
            trans[r["query"]].setdefault(r["lang"], r["pos"][0])
    # messages of 3+ words (single words are ambiguous); most have one held-out translation, a few 2-5
    pool = sorted(q for q in trans if len(q.split()) >= 3)
    picked = random.Random(seed).sample(pool, min(n_queries, len(pool)))
    corpus: dict[str, Document] = {}
    queries, qrels = {}, {}
    for j, q in enumerate(picked):
        qid = f"x{j}"
        queries[qid] = q
        qrels[qid] = {}
        for lang, t in trans[q].items():
            corpus.setdefault(_doc_id(t), Document(_doc_id(t), t, lang=lang))
            qrels[qid][_doc_id(t)] = 1
    return RetrievalDataset("gettext-heldout", "dev", list(corpus.values()), queries, qrels,
                            dict.fromkeys(queries, "en"))


def candidates(ds: RetrievalDataset, model: M3Model, batch_size: int) -> tuple[list[str], list]:
    """Query ids and, per query, every ``all``-mode candidate: doc ids and their ``[n, 3]`` exact
    (dense, sparse, colbert) scores."""
    t = time.perf_counter()
    idx = M3Index.build([d.as_index_record() for d in ds.corpus], model, None, batch_size=batch_size,
                        max_length=512, store_text=False, show_progress=False)
    try:
        qids = ds.query_ids
        q = model.encode([ds.queries[x] for x in qids], batch_size=batch_size, max_length=512, return_dense=True,
                         return_sparse=True, return_colbert=True)
        hits = idx.search(q, k=400, mode="all", weights=(1.0, 1.0, 1.0))
    finally:
        idx.close(discard=True)
    print(f"{ds.name}: {len(qids)} queries, {len(ds.corpus)} docs, encoded and searched in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return qids, [([h.id for h in hs], np.array([[h.scores[m] for m in ("dense", "sparse", "colbert")] for h in hs]))
                  for hs in hits]


def ndcg(ds: RetrievalDataset, qids: list[str], cands: list, w: tuple[float, float, float]) -> float:
    run = {}
    for qid, (ids, comp) in zip(qids, cands, strict=True):
        s = comp @ np.asarray(w)
        order = np.argsort(-s, kind="stable")[:10]
        run[qid] = {ids[i]: float(s[i]) for i in order}
    return evaluate_run(ds.qrels, run, ["nDCG@10"]).mean["nDCG@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="m3embed-small")
    ap.add_argument("--per-source", type=int, default=100, help="short-doc queries per train_mix source")
    ap.add_argument("--xling-queries", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default="short,xling", help="dev sets to compute now (others are read from --out)")
    ap.add_argument("--out", type=Path, required=True, help="prefix of the output files")
    args = ap.parse_args()
    builders = {"short": lambda: short_dev(args.per_source, args.seed),
                "xling": lambda: xling_dev(args.xling_queries, args.seed)}
    todo = [s for s in args.sets.split(",") if s]
    # the fused fp32 path: the plain forward's scores (within 1e-5), faster
    model = M3Model.from_pretrained(args.model, precision="fp32") if todo else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    points = [(wd, ws, 1.0) for wd in GRID_DENSE for ws in GRID_SPARSE]
    named = {"dense": (1.0, 0.0, 0.0), "sparse": (0.0, 1.0, 0.0), "colbert": (0.0, 0.0, 1.0),
             "paper (1, 0.3, 1)": PAPER_WEIGHTS}
    for key in todo:
        ds = builders[key]()
        q, c = candidates(ds, model, args.batch_size)
        res = {"name": ds.name, "queries": len(ds.queries), "docs": len(ds.corpus),
               "grid": [[*w, ndcg(ds, q, c, w)] for w in points],
               "named": {k: ndcg(ds, q, c, w) for k, w in named.items()}}
        Path(f"{args.out}.{key}.json").write_text(json.dumps(res))
    per_set = {key: json.loads(Path(f"{args.out}.{key}.json").read_text()) for key in builders
               if Path(f"{args.out}.{key}.json").is_file()}
    if not per_set:
        raise SystemExit(f"no dev-set results at {args.out}.<set>.json: run with --sets short,xling")
    mean = np.mean([[g[3] for g in r["grid"]] for r in per_set.values()], axis=0)
    i_best = int(np.argmax(mean))
    best = points[i_best]
    at_best = {k: r["grid"][i_best][3] for k, r in per_set.items()}
    names = [r["name"] for r in per_set.values()]
    lines = ["| weights (dense, sparse, colbert) | " + " | ".join(names) + " | mean |",
             "|---|" + "---:|" * (len(per_set) + 1)]
    rows = {k: [r["named"][k] for r in per_set.values()] for k in named}
    rows[f"best on the mean {best}"] = list(at_best.values())
    for k, v in rows.items():
        lines.append(f"| {k} | " + " | ".join(f"{x:.4f}" for x in v) + f" | {np.mean(v):.4f} |")
    print("\n".join(lines))
    info = {"model": args.model, "best": best, "table": rows,
            "sets": {k: {x: r[x] for x in ("name", "queries", "docs")} for k, r in per_set.items()}}
    Path(f"{args.out}.json").write_text(json.dumps(info, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
