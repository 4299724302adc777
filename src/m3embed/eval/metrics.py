"""Ranking metrics through ``ir_measures`` (pytrec_eval backend): per query, mean, per language.

Means are over every evaluated query: a query with no retrieved document scores 0 (pytrec_eval
itself would skip it and average over the rest).

MRR@10 is trec_eval's ``recip_rank`` over each query's first 10 documents in trec_eval's own
order (score descending, ties by document id descending). pytrec_eval's ``recip_rank`` has no
cutoff, and ``ir_measures.pytrec_eval`` silently ignores the ``@10`` of ``RR@10`` (a relevant
document at rank 11 scores 1/11), while ir_measures' default routing sends ``RR@10`` to its
msmarco provider, which breaks ties differently from the other metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from .datasets import Qrels, Run

#: report name → (ir_measures measure computed by pytrec_eval, run depth it is computed on; None = all)
MEASURES = {"nDCG@10": (nDCG @ 10, None), "R@100": (R @ 100, None), "MRR@10": (RR, 10)}
DEFAULT_METRICS = tuple(MEASURES)


@dataclass
class MetricResult:
    """Per-query values and means of each metric (``per_query[qid][metric]``)."""

    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]
    per_lang: dict[str, dict[str, float]]  # lang → metric → mean; empty without query languages

    def to_dict(self, *, per_query: bool = True) -> dict:
        d: dict = {"mean": self.mean, "per_lang": self.per_lang}
        if per_query:
            d["per_query"] = self.per_query
        return d


def hits_to_run(query_ids: Sequence[str], results: Sequence[Iterable[object]]) -> Run:
    """Search results (per query, best first: objects with ``.id``/``.score`` or ``(id, score)`` pairs) → run dict."""
    if len(query_ids) != len(results):
        raise ValueError(f"{len(query_ids)} query ids but {len(results)} result lists")
    run: Run = {}
    for qid, hits in zip(query_ids, results, strict=True):
        docs: dict[str, float] = {}
        for h in hits:
            did, score = (h.id, h.score) if hasattr(h, "id") else h  # type: ignore[attr-defined,misc]
            docs.setdefault(str(did), float(score))  # a duplicate keeps its first (higher-ranked) score
        run[qid] = docs
    return run


def evaluate_run(
    qrels: Qrels,
    run: Run,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    query_lang: Mapping[str, str] | None = None,
) -> MetricResult:
    """Score ``run`` against ``qrels`` for every query in ``qrels`` (missing from the run → 0).

    ``query_lang`` (query id → language) adds a per-language mean of each metric.
    """
    unknown = [m for m in metrics if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(MEASURES)}")
    per_query = {q: dict.fromkeys(metrics, 0.0) for q in qrels}
    # runs with queries outside the qrels are allowed (ignored)
    run = {q: d for q, d in run.items() if q in qrels and d}
    for depth in dict.fromkeys(MEASURES[m][1] for m in metrics):
        names = {MEASURES[m][0]: m for m in metrics if MEASURES[m][1] == depth}
        evaluator = ir_measures.pytrec_eval.evaluator(list(names), qrels)
        for res in evaluator.iter_calc(run if depth is None else truncate_run(run, depth)):
            per_query[res.query_id][names[res.measure]] = float(res.value)
    mean = _mean(per_query.values(), metrics)
    per_lang: dict[str, dict[str, float]] = {}
    if query_lang:
        for lang in sorted(set(query_lang.values())):
            rows = [per_query[q] for q in qrels if query_lang.get(q) == lang]
            per_lang[lang] = _mean(rows, metrics)
    return MetricResult(per_query, mean, per_lang)


def truncate_run(run: Run, depth: int) -> Run:
    """Each query's first ``depth`` documents in trec_eval's order (score desc, then doc id desc)."""
    return {q: dict(sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:depth]) for q, docs in run.items()}


def _mean(rows: Iterable[Mapping[str, float]], metrics: Sequence[str]) -> dict[str, float]:
    rows = list(rows)
    return {m: float(np.mean([r[m] for r in rows])) if rows else 0.0 for m in metrics}
