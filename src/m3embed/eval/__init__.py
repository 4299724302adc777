"""Evaluation harness: BEIR / MIRACL loaders, a BM25 baseline, ranking metrics, reports, ``evaluate``."""

from .bm25 import BM25, BM25S_DEFAULTS, PYSERINI_DEFAULTS
from .datasets import (
    Document,
    Qrels,
    RetrievalDataset,
    Run,
    load_beir,
    load_beir_qrels,
    load_corpus,
    load_miracl,
    load_queries,
    load_topics,
    load_trec_qrels,
    read_trec_run,
    write_trec_run,
)
from .metrics import DEFAULT_METRICS, MEASURES, MetricResult, evaluate_run, hits_to_run
from .report import render_markdown, write_json, write_markdown, write_plot, write_reports
from .results import MODE_LABELS, MODEL_MODES, EvalResults, SystemResult
from .run import evaluate

__all__ = [
    "BM25", "BM25S_DEFAULTS", "DEFAULT_METRICS", "MEASURES", "MODEL_MODES", "MODE_LABELS", "PYSERINI_DEFAULTS",
    "Document", "EvalResults", "MetricResult", "Qrels", "RetrievalDataset", "Run", "SystemResult", "evaluate",
    "evaluate_run", "hits_to_run", "load_beir", "load_beir_qrels", "load_corpus", "load_miracl", "load_queries",
    "load_topics", "load_trec_qrels", "read_trec_run", "render_markdown", "write_json", "write_markdown",
    "write_plot", "write_reports", "write_trec_run",
]
