"""Backend parity: every vector-database backend against ``M3Index`` on real data and the real model.

For each dataset (BEIR folders under ``shared/data``) the corpus and the test queries are encoded
once with ``m3embed-small`` (cached with ``np.savez`` under ``.cache/backends/``; ColBERT vectors
kept in float16; ``M3Index``'s default fp16 codec holds them without loss and the backends store
them as float32). ``M3Index`` is built from the encodings, each backend is filled from that index
(``from_index``: the same vectors), and every mode is searched with ``k = 10`` — with client-side
fusion and, where the backend has one, the engine's own fusion.

Reported per backend × mode × fusion × dataset: nDCG@10, top-10 agreement with ``M3Index`` (the
same ids in the same order; "up to ties" counts lists that differ only inside groups of equal
``M3Index`` scores, |Δ| ≤ 1e-5), the mean overlap@10, ingest rate and search time per query.

    python benchmarks/backend_parity.py                         # both datasets, every backend
    python benchmarks/backend_parity.py --datasets xquad_r/paragraph/en --backends qdrant --max-queries 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# numpy's multi-threaded BLAS on the small matrices of the local-mode engines (one MaxSim per point)
# is ~10x slower than one thread on a loaded 2-core machine (threads spinning): one thread
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from m3embed.backends import from_index, open_store  # noqa: E402
from m3embed.eval.datasets import load_beir  # noqa: E402
from m3embed.eval.metrics import evaluate_run, hits_to_run  # noqa: E402
from m3embed.index import MODES, M3Index  # noqa: E402
from m3embed.output import ColbertVectors, LexicalWeights, M3Output  # noqa: E402

CACHE = REPO / ".cache" / "backends"
SHARED = Path(os.environ.get("M3EMBED_SHARED", REPO.parent / "shared"))
DATASETS = ("xquad_r/paragraph/en", "pubmedqa_en")
TIE = 1e-5


# ---------------------------------------------------------------------------- encodings (cached)
def _save(path: Path, prefix: str, out: M3Output, arrays: dict) -> None:
    arrays[f"{prefix}dense"] = out.dense
    arrays[f"{prefix}lex_indptr"], arrays[f"{prefix}lex_ids"] = out.lexical.indptr, out.lexical.ids
    arrays[f"{prefix}lex_w"] = out.lexical.weights
    arrays[f"{prefix}col"] = out.colbert.data.astype(np.float16)
    arrays[f"{prefix}col_off"] = out.colbert.offsets


def _load(z, prefix: str, vocab: int) -> M3Output:
    lex = LexicalWeights(z[f"{prefix}lex_indptr"], z[f"{prefix}lex_ids"], z[f"{prefix}lex_w"], vocab)
    col = ColbertVectors(z[f"{prefix}col"].astype(np.float32), z[f"{prefix}col_off"])
    return M3Output(dense=z[f"{prefix}dense"], lexical=lex, colbert=col)


def encodings(name: str, ds, model_name: str, batch_size: int) -> tuple[M3Output, M3Output, dict]:
    """(documents, queries, fingerprint) of ``ds``, encoded once and cached."""
    path = CACHE / f"enc-{name.replace('/', '_')}-{model_name}.npz"
    doc_ids = [d.id for d in ds.corpus]
    qids = ds.query_ids
    if path.is_file():
        with np.load(path) as z:
            fp = json.loads(str(z["fingerprint"]))
            if list(z["doc_ids"]) == doc_ids and list(z["query_ids"]) == qids:
                return _load(z, "d_", fp["vocab_size"]), _load(z, "q_", fp["vocab_size"]), fp
        print(f"{path}: stale cache, re-encoding", flush=True)
    from m3embed import M3Model
    from m3embed.index import model_fingerprint

    model = M3Model.from_pretrained(model_name)
    fp = model_fingerprint(model)
    t = time.perf_counter()
    docs = model.encode([d.full_text for d in ds.corpus], batch_size=batch_size, max_length=512, return_dense=True,
                        return_sparse=True, return_colbert=True)
    print(f"{name}: encoded {len(doc_ids)} documents in {time.perf_counter() - t:.0f} s", flush=True)
    qs = model.encode([ds.queries[q] for q in qids], batch_size=batch_size, max_length=512, return_dense=True,
                      return_sparse=True, return_colbert=True)
    arrays: dict = {"doc_ids": np.array(doc_ids), "query_ids": np.array(qids), "fingerprint": json.dumps(fp)}
    _save(path, "d_", docs, arrays)
    _save(path, "q_", qs, arrays)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    with np.load(path) as z:  # the float16 round trip, as every later run sees it
        return _load(z, "d_", fp["vocab_size"]), _load(z, "q_", fp["vocab_size"]), fp


# ---------------------------------------------------------------------------- comparisons
def same_up_to_ties(got: list, ref: list) -> bool:
    if len(got) != len(ref):
        return False
    start = 0
    for j in range(1, len(ref) + 1):
        if j == len(ref) or abs(ref[j].score - ref[j - 1].score) > TIE:
            if {h.id for h in got[start:j]} != {h.id for h in ref[start:j]}:
                return False
            start = j
    return True


def agreement(got: list[list], ref: list[list]) -> dict:
    exact = sum([h.id for h in g] == [h.id for h in r] for g, r in zip(got, ref, strict=True))
    ties = sum(same_up_to_ties(g, r) for g, r in zip(got, ref, strict=True))
    overlap = np.mean([len({h.id for h in g} & {h.id for h in r}) / len(r) if r else float(not g)
                       for g, r in zip(got, ref, strict=True)])  # two empty lists (no sparse match) agree
    n = len(ref)
    return {"exact": exact / n, "up_to_ties": ties / n, "overlap": float(overlap)}


def ndcg(ds, qids: list[str], hits: list[list]) -> float:
    qrels = {q: ds.qrels[q] for q in qids}
    return evaluate_run(qrels, hits_to_run(qids, hits), ("nDCG@10",)).mean["nDCG@10"]


def searched(store, q: M3Output, mode: str, fusion: str, batch: int) -> tuple[list[list], float]:
    from m3embed.backends.base import take_rows

    hits: list[list] = []
    t = time.perf_counter()
    for s in range(0, len(q), batch):
        part = take_rows(q, range(s, min(s + batch, len(q))))
        kw = {} if isinstance(store, M3Index) else {"fusion": fusion, "with_payload": False}
        hits.extend(store.search(part, k=10, mode=mode, **kw))
    return hits, (time.perf_counter() - t) / len(q)


def open_backend(name: str, root: Path, fp: dict):
    if name == "qdrant":
        return open_store("qdrant", path=str(root / "qdrant"), collection="parity", model=fp, timeout=300)
    if name == "milvus":
        return open_store("milvus", uri=str(root / "milvus.db"), collection="parity", model=fp, timeout=300)
    if name == "local":
        return open_store("local", path=root / "local", model=fp)
    raise ValueError(name)


# ---------------------------------------------------------------------------- main
def run_dataset(name: str, args, report: dict) -> None:
    ds = load_beir(SHARED / "data" / name, "test")
    docs, qs, fp = encodings(name, ds, args.model, args.batch_size)
    qids = ds.query_ids
    if args.max_queries and len(qids) > args.max_queries:
        from m3embed.backends.base import take_rows

        qs, qids = take_rows(qs, range(args.max_queries)), qids[: args.max_queries]
    work = Path(tempfile.mkdtemp(prefix="parity-", dir=args.workdir))
    try:
        idx = M3Index.create(work / "m3index", fp, store_text=False)
        t = time.perf_counter()
        idx.add([d.id for d in ds.corpus], docs)
        idx.save()
        build = time.perf_counter() - t
        rows = []
        refs = {}
        for mode in args.modes:
            refs[mode], sec = searched(idx, qs, mode, "auto", args.batch)
            rows.append({"dataset": name, "backend": "M3Index", "mode": mode, "fusion": "-",
                         "ndcg10": ndcg(ds, qids, refs[mode]), "exact": 1.0, "up_to_ties": 1.0, "overlap": 1.0,
                         "ms_per_query": sec * 1e3})
        report["ingest"].append({"dataset": name, "backend": "M3Index", "docs": len(ds.corpus),
                                 "passages_per_s": len(ds.corpus) / build})
        for backend in args.backends:
            store = open_backend(backend, work, fp)
            t = time.perf_counter()
            from_index(idx, store, chunk_size=256, store_text=False)
            ing = time.perf_counter() - t
            assert store.count() == len(ds.corpus), (backend, store.count())
            report["ingest"].append({"dataset": name, "backend": backend, "docs": len(ds.corpus),
                                     "passages_per_s": len(ds.corpus) / ing})
            print(f"{name}: {backend} ingested {len(ds.corpus)} docs in {ing:.1f} s", flush=True)
            for mode in args.modes:
                fusions = ["client"] + (["engine"] if mode in store.engine_modes else [])
                for fusion in fusions:
                    hits, sec = searched(store, qs, mode, fusion, args.batch)
                    row = {"dataset": name, "backend": backend, "mode": mode, "fusion": fusion,
                           "ndcg10": ndcg(ds, qids, hits), **agreement(hits, refs[mode]), "ms_per_query": sec * 1e3}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            store.close()
        report["rows"].extend(rows)
        report["queries"][name] = len(qids)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(report: dict) -> str:
    lines = ["| dataset | backend | mode | fusion | nDCG@10 | Δ vs M3Index (pt) | top-10 same order | "
             "same up to ties | overlap@10 | ms / query |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["dataset"], r["mode"]): r["ndcg10"] for r in report["rows"] if r["backend"] == "M3Index"}
    for r in report["rows"]:
        d = 100 * (r["ndcg10"] - base[(r["dataset"], r["mode"])])
        lines.append(f"| {r['dataset']} | {r['backend']} | {r['mode']} | {r['fusion']} | {r['ndcg10']:.4f} | "
                     f"{d:+.2f} | {100 * r['exact']:.1f} % | {100 * r['up_to_ties']:.1f} % | "
                     f"{100 * r['overlap']:.1f} % | {r['ms_per_query']:.1f} |")
    lines += ["", "| dataset | backend | documents | ingest (passages/s) |", "|---|---|---|---|"]
    for r in report["ingest"]:
        lines.append(f"| {r['dataset']} | {r['backend']} | {r['docs']} | {r['passages_per_s']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--backends", default="qdrant,milvus")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--model", default="m3embed-small")
    ap.add_argument("--batch-size", type=int, default=32, help="encoding batch size")
    ap.add_argument("--batch", type=int, default=32, help="queries per search call")
    ap.add_argument("--max-queries", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=str(CACHE / "parity.json"))
    ap.add_argument("--merge", nargs="+", default=None, help="print one table from the JSON files of earlier runs")
    args = ap.parse_args()
    if args.merge:
        merged: dict = {"rows": [], "ingest": []}
        seen: set = set()
        for f in args.merge:
            rep = json.loads(Path(f).read_text())
            for key in ("rows", "ingest"):
                for r in rep[key]:
                    if key == "rows" and r["exact"] == 1.0:  # runs before the empty-list fix of agreement()
                        r["overlap"] = 1.0
                    tag = (key, r["dataset"], r["backend"], r.get("mode"), r.get("fusion"))
                    if tag not in seen:
                        seen.add(tag)
                        merged[key].append(r)
        order = {"M3Index": 0, "qdrant": 1, "milvus": 2, "local": 3}
        merged["rows"].sort(key=lambda r: (r["dataset"], MODES.index(r["mode"]), order.get(r["backend"], 9)))
        merged["ingest"].sort(key=lambda r: (r["dataset"], order.get(r["backend"], 9)))
        print(markdown(merged))
        return
    args.backends = [b for b in args.backends.split(",") if b]
    args.modes = [m for m in args.modes.split(",") if m]
    report: dict = {"rows": [], "ingest": [], "queries": {}, "model": args.model, "k": 10,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name in args.datasets:
        run_dataset(name, args, report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(markdown(report))


if __name__ == "__main__":
    main()
