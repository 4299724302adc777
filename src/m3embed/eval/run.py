"""``evaluate``: one dataset split, every search mode and BM25 → metrics and report files.

The corpus is encoded once (``M3Index.build``) and the queries once (all three outputs); every
mode then searches the same index with the same query encodings, so the table compares
retrieval methods, not encoding runs.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..output import LexicalWeights, M3Output
from .bm25 import BM25, BM25S_DEFAULTS
from .datasets import RetrievalDataset, load_beir, write_trec_run
from .metrics import DEFAULT_METRICS, MetricResult, evaluate_run, hits_to_run
from .report import write_reports
from .results import MODEL_MODES, EvalResults, SystemResult

if TYPE_CHECKING:
    from ..model import M3Model

logger = logging.getLogger(__name__)


def evaluate(
    dataset_dir: str | Path | RetrievalDataset,
    split: str = "test",
    model: M3Model | str | Path | None = None,
    *,
    modes: Sequence[str] = MODEL_MODES,
    k: int = 100,
    max_query_length: int = 512,
    max_passage_length: int = 512,
    batch_size: int = 32,
    out_dir: str | Path | None = None,
    mcls: bool = False,
    bm25: bool = True,
    bm25_k1: float = BM25S_DEFAULTS[0],
    bm25_b: float = BM25S_DEFAULTS[1],
    weights: object | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    device: str | None = None,
    show_progress: bool = True,
    save_runs: bool = False,
    index_options: dict | None = None,
) -> EvalResults:
    """Evaluate ``model`` (every mode in ``modes``) and BM25 on one split of a retrieval dataset.

    ``dataset_dir`` is a BEIR folder (``qrels/<split>.tsv`` picks the queries) or an already
    loaded :class:`RetrievalDataset` (e.g. from ``load_miracl``). ``model`` is an ``M3Model`` or a
    checkpoint path / hub id; it may be ``None`` when ``modes`` is empty (BM25 only). Each query
    gets its top ``min(k, corpus size)`` documents. ``weights`` ``(w_dense, w_sparse, w_colbert)``
    go to ``M3Index.search`` (``None`` = the model's ``hybrid_weights``: the paper's 1 / 0.3 / 1 unless its
    checkpoint gives its own). ``index_options`` go to ``M3Index.build`` (e.g.
    ``{"multivec": "fp32"}``; default: the index's defaults without stored text). ``mcls=True``
    encodes passages with a [CLS] every 256 tokens (queries never). With ``out_dir``, writes
    ``eval.md``, ``eval.json``, ``eval.png`` (and TREC runs under ``runs/`` when ``save_runs``).
    """
    t_start = time.perf_counter()
    modes = list(dict.fromkeys(modes))  # drop repeats, keep order
    bad = [m for m in modes if m not in MODEL_MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; available: {', '.join(MODEL_MODES)}")
    if not modes and not bm25:
        raise ValueError("nothing to evaluate: no search mode and bm25=False")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if modes and model is None:
        raise ValueError(f"modes {modes} need a model (pass model=..., or modes=() for BM25 only)")

    timings: dict[str, float] = {}
    t = time.perf_counter()
    ds = dataset_dir if isinstance(dataset_dir, RetrievalDataset) else load_beir(dataset_dir, split)
    timings["load_data"] = time.perf_counter() - t
    k_eff = min(k, len(ds.corpus))
    if k_eff < k:
        logger.info("k=%d exceeds the corpus (%d docs): using k=%d", k, len(ds.corpus), k_eff)
    qids = ds.query_ids
    qtexts = [ds.queries[q] for q in qids]
    runs: dict[str, list] = {}
    systems: list[SystemResult] = []

    t = time.perf_counter()
    m3 = _as_model(model, device) if modes else None
    if m3 is not None and m3 is not model:
        timings["load_model"] = time.perf_counter() - t
    if bm25:
        tok = m3.tokenizer if m3 is not None else _default_tokenizer()
        t = time.perf_counter()
        bm = BM25(tok, k1=bm25_k1, b=bm25_b).index([d.id for d in ds.corpus], [d.full_text for d in ds.corpus])
        timings["bm25_index"] = time.perf_counter() - t
        t = time.perf_counter()
        runs["bm25"] = bm.search(qtexts, k=k_eff)
        timings["bm25_search"] = time.perf_counter() - t
    # token vectors only when a mode reads them (rrf uses them when present)
    defaults: dict = {"store_text": False}
    if not any(m in ("multivec", "all", "rrf") for m in modes):
        defaults["multivec"] = "none"
    index_options = {**defaults, **(index_options or {})}
    if m3 is not None:
        idx = _build_index(ds, m3, batch_size=batch_size, max_length=max_passage_length, mcls=mcls,
                           show_progress=show_progress, timings=timings, options=index_options)
        try:
            t = time.perf_counter()
            q_out = m3.encode(qtexts, batch_size=batch_size, max_length=max_query_length, return_dense=True,
                              return_sparse=True, return_colbert=True)
            timings["query_encode"] = time.perf_counter() - t
            for mode in modes:
                t = time.perf_counter()
                runs[mode] = _search(idx, q_out, k_eff, mode, weights)
                timings[f"search_{mode}"] = time.perf_counter() - t
                logger.info("%s: searched %d queries in %.2f s", mode, len(qids), timings[f"search_{mode}"])
        finally:
            idx.close(discard=True)  # a temporary index: remove its files now, not at garbage collection

    used_weights = weights if weights is not None or m3 is None else m3.hybrid_weights
    t = time.perf_counter()
    for key, res in runs.items():
        run = hits_to_run(qids, res)
        mr: MetricResult = evaluate_run(ds.qrels, run, metrics, query_lang=ds.query_lang)
        seconds = timings["bm25_search"] if key == "bm25" else timings[f"search_{key}"]
        systems.append(SystemResult(key, mr, seconds, sum(len(h) for h in res)))
    timings["metrics"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    results = EvalResults(
        dataset={"name": ds.name, "split": ds.split, "source": ds.source, **ds.stats(), "languages": ds.languages},
        model=_model_info(m3) if m3 is not None else None,
        config={"k": k, "k_used": k_eff, "modes": modes, "bm25": bm25, "bm25_k1": bm25_k1, "bm25_b": bm25_b,
                "bm25_tokens": "XLM-R SentencePiece ids, no specials, full text", "weights": _jsonable(used_weights),
                "max_query_length": max_query_length, "max_passage_length": max_passage_length,
                "batch_size": batch_size, "mcls": mcls, "metrics": list(metrics),
                "index_options": _jsonable(index_options) if m3 is not None else None},
        systems=systems, metrics=list(metrics), timings=timings, environment=_environment(m3),
    )
    if out_dir is not None:
        out = Path(out_dir)
        if save_runs:
            for key, res in runs.items():
                path = out / "runs" / f"{key.replace('+', '_')}.trec"
                write_trec_run(path, {q: [(h.id, h.score) for h in hits] for q, hits in zip(qids, res, strict=True)},
                               tag=f"m3embed-{key.replace('+', '_')}")
                results.files[f"run_{key}"] = str(path)
        write_reports(results, out)
    return results


def _as_model(model: M3Model | str | Path, device: str | None) -> M3Model:
    from ..model import M3Model

    if isinstance(model, M3Model):
        return model
    return M3Model.from_pretrained(model, device=device)


def _default_tokenizer():
    """The XLM-R tokenizer for a BM25-only run: ``$M3EMBED_TOKENIZER``, else ``reference/xlmr-tokenizer``
    under ``$M3EMBED_SHARED`` or the ``shared`` folder beside the repository."""
    from ..tokenize import M3Tokenizer

    candidates = [Path(os.environ["M3EMBED_TOKENIZER"])] if os.environ.get("M3EMBED_TOKENIZER") else []
    shared = os.environ.get("M3EMBED_SHARED") or Path(__file__).resolve().parents[4] / "shared"
    candidates.append(Path(shared) / "reference" / "xlmr-tokenizer")
    for c in candidates:
        if (c / "tokenizer.json").is_file():
            return M3Tokenizer.from_dir(c)
    raise FileNotFoundError("BM25 without a model needs an XLM-R tokenizer: set M3EMBED_TOKENIZER to a directory "
                            f"with tokenizer.json (tried {', '.join(map(str, candidates))})")


def _build_index(ds: RetrievalDataset, model: M3Model, *, batch_size: int, max_length: int, mcls: bool,
                 show_progress: bool, timings: dict[str, float], options: dict):
    try:
        from ..index import M3Index
    except ImportError as e:
        raise RuntimeError(f"search modes need m3embed.index (M3Index), which failed to import: {e}") from e
    records = [d.as_index_record() for d in ds.corpus]
    t = time.perf_counter()
    idx = M3Index.build(records, model, None, batch_size=batch_size, max_length=max_length, mcls=mcls,
                        show_progress=show_progress, **options)
    timings["index_build"] = time.perf_counter() - t  # corpus encoding included
    return idx


def _search(idx, q_out: M3Output, k: int, mode: str, weights: object | None) -> list:
    """``idx.search`` of every query; in ``sparse`` mode a query without lexical weights gets no hits
    (the index refuses such a query, and one must not abort the whole evaluation)."""
    kw = {} if weights is None else {"weights": weights}
    if mode != "sparse":
        return idx.search(q_out, k=k, mode=mode, **kw)
    lex = q_out.lexical
    ok = np.flatnonzero(np.diff(lex.indptr) > 0)
    if len(ok) == len(q_out):
        return idx.search(q_out, k=k, mode=mode, **kw)
    logger.warning("sparse: %d of %d queries have no lexical weight and retrieve nothing", len(q_out) - len(ok),
                   len(q_out))
    out: list[list] = [[] for _ in range(len(q_out))]
    if len(ok):
        for i, hits in zip(ok, idx.search(_take_lexical(q_out, ok), k=k, mode=mode, **kw), strict=True):
            out[i] = hits
    return out


def _take_lexical(out: M3Output, rows: np.ndarray) -> M3Output:
    """An ``M3Output`` of the given rows' lexical weights only."""
    lex = out.lexical
    starts, ends = lex.indptr[rows], lex.indptr[rows + 1]
    take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)]).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    return M3Output(lexical=LexicalWeights(indptr, lex.ids[take], lex.weights[take], lex.vocab_size))


def _model_info(model: M3Model) -> dict:
    return {
        "source": str(getattr(model, "source", type(model).__name__)),
        "hidden_size": model.hidden_size,
        "colbert_dim": model.colbert_dim,
        "max_positions": model.max_positions,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
    }


def _environment(model: M3Model | None) -> dict:
    from .. import __version__

    env = {"m3embed": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
           "platform": platform.platform(), "cpus": os.cpu_count(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if model is not None:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


def _jsonable(x: object) -> object:
    if x is None or isinstance(x, str | int | float | bool):
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return repr(x)

