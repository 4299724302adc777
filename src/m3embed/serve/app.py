"""``create_app(model, index=None, config=...)``: the HTTP API over one model (and optionally one index).

Endpoints: ``POST /v1/embeddings`` (OpenAI), ``POST /encode``, ``POST /score``, ``POST /search``,
``GET /health``, ``GET /ready``, ``GET /metrics``. Texts are tokenised on arrival (in a thread)
and queued on the :class:`~.batcher.Batcher`, whose single worker thread owns the model; the
event loop only parses, queues, waits and renders. Scores and index searches reuse
:func:`m3embed.scoring.pair_scores` and :meth:`M3Index.search` on the batcher's outputs.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .. import __version__
from ..index.search import needs as search_needs
from ..scoring import DEFAULT_WEIGHTS, pair_scores
from .auth import ApiKeys
from .batcher import Batcher, QueueFull, ShuttingDown, slice_output
from .config import ServeConfig
from .errors import ApiError, install_error_handlers
from .metrics import Metrics
from .middleware import ServeMiddleware
from .schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    ScoreRequest,
    ScoreResponse,
    SearchRequest,
    SearchResponse,
)

if TYPE_CHECKING:
    from ..index import M3Index
    from ..model import M3Model
    from ..output import M3Output

logger = logging.getLogger("m3embed.serve")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in ((400, "Invalid request (the error names the field and index)"), (401, "Missing or bad API key"),
                       (413, "Too many texts, a text too long or a body too large"),
                       (503, "Queue full or shutting down (see Retry-After)"), (504, "Timed out waiting for the model"))
}


class ServeState:
    """What the endpoints share; ``app.state.m3``."""

    def __init__(self, model: M3Model, index: M3Index | None, config: ServeConfig, metrics: Metrics,
                 batcher: Batcher) -> None:
        self.model = model
        self.index = index
        self.config = config
        self.metrics = metrics
        self.batcher = batcher
        self.search_lock = threading.Lock()  # M3Index.search reuses scratch buffers: one search at a time
        self.default_max_length = min(config.max_length, model.max_positions)
        # tokenising, rendering, scoring and searching run here, off the event loop; two threads bound the
        # threads (and malloc arenas) a burst of requests can create, and the GIL serialises this work anyway
        self.cpu_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="m3embed-cpu")

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the CPU pool."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, functools.partial(fn, *args, **kwargs))


def create_app(model: M3Model, index: M3Index | None = None, config: ServeConfig | None = None, *,
               encode_fn: Callable[..., M3Output] | None = None, check_model: bool = True) -> FastAPI:
    """The FastAPI app serving ``model`` (and ``index`` for ``/search``) under ``config``.

    The model worker starts with the app's lifespan and drains its queue when the app shuts down.
    ``check_model``: refuse an index built with another model (``ModelMismatchError``).
    ``encode_fn`` replaces :func:`m3embed.encode.encode_ids` for a round (tests).
    """
    config = config or ServeConfig()
    if index is not None and check_model:
        from ..index.core import _check_model, model_fingerprint

        _check_model(index.fingerprint, model_fingerprint(model), strict=True)
    metrics = Metrics()
    batcher = Batcher(model, config, metrics, encode_fn)
    st = ServeState(model, index, config, metrics, batcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        logger.info("model worker started (%s)", config.describe())
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests; finish whatever is still queued
            await asyncio.to_thread(batcher.close)
            st.cpu_pool.shutdown(wait=False)
            logger.info("model worker stopped after %d rounds", batcher.rounds)

    app = FastAPI(title="m3embed", version=__version__, lifespan=lifespan,
                  description="BGE M3 embeddings: dense, sparse and multi-vector (ColBERT) over HTTP.")
    app.state.m3 = st
    install_error_handlers(app)
    _routes(app, st)
    app.add_middleware(ServeMiddleware, config=config, metrics=metrics, keys=ApiKeys(config.api_keys),
                       admit=batcher.admit)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    return app


# ---------------------------------------------------------------------------- helpers
def _texts(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def _check_sizes(st: ServeState, texts: list[str], name: str) -> None:
    cfg = st.config
    if len(texts) > cfg.max_texts_per_request:
        raise ApiError(413, f"{name}: {len(texts)} items, more than the limit of {cfg.max_texts_per_request} "
                            "per request", param=name, code="too_many_inputs")
    for i, t in enumerate(texts):
        if len(t) > cfg.max_chars_per_text:
            raise ApiError(413, f"{name}[{i}]: {len(t)} characters, more than the limit of {cfg.max_chars_per_text}",
                           param=f"{name}[{i}]", code="input_too_long")


def _max_length(st: ServeState, value: int | None, name: str) -> int:
    if value is None:
        return st.default_max_length
    top = st.model.max_positions
    if not 2 <= value <= top:
        raise ApiError(400, f"{name}: must be between 2 and {top} (the model's position limit), got {value}",
                       param=name)
    return value


def _b64(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def _usage(out: M3Output) -> dict[str, int]:
    n = int(out.n_tokens.sum()) if out.n_tokens is not None else 0
    return {"prompt_tokens": n, "total_tokens": n}


async def _json(st: ServeState, render: Callable[[], dict[str, Any]]) -> Response:
    """Build and serialise a response off the event loop (large float arrays take a while)."""
    def dump() -> bytes:
        payload = render()
        try:
            return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:  # a lone surrogate echoed back (e.g. in "model"): escape it
            return json.dumps(payload, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()

    return Response(await st.run(dump), media_type="application/json")


def _queue_errors(st: ServeState, fn: Callable[[], Any]) -> Any:
    retry = {"Retry-After": str(st.config.retry_after_s)}
    try:
        return fn()
    except QueueFull as e:
        raise ApiError(503, f"{e}; retry later", code="queue_full", headers=retry) from None
    except ShuttingDown as e:
        raise ApiError(503, str(e), code="shutting_down", headers=retry) from None


async def _tokenize(st: ServeState, texts: list[str], max_length: int, mcls: bool = False) -> list[list[int]]:
    _queue_errors(st, st.batcher.admit)  # an overloaded server refuses before spending time on tokenising
    return await st.run(st.model.tokenizer.tokenize, texts, max_length=max_length, mcls=mcls)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.01)  # not expected after the body; never spin


async def _run(st: ServeState, request: Request, ids: list[list[int]], *, mcls: bool = False, dense: bool = True,
               sparse: bool = False, colbert: bool = False) -> M3Output:
    """Queue ``ids`` on the batcher and wait for the rows; 503 / 504 / client-gone handled here."""
    cfg = st.config
    rid = getattr(request.state, "request_id", None)
    cf = _queue_errors(st, lambda: st.batcher.submit(ids, mcls=mcls, dense=dense, sparse=sparse, colbert=colbert,
                                                      request_id=rid))
    fut = asyncio.wrap_future(cf)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    arrived = getattr(request.state, "arrived", None)  # set by the middleware: the timeout counts from arrival
    left = cfg.request_timeout_s - (time.monotonic() - arrived if arrived is not None else 0.0)
    try:
        done, _ = await asyncio.wait({fut, watcher}, timeout=max(left, 0.0), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the request task itself was cancelled (forced shutdown): withdraw the job
        fut.cancel()
        raise
    finally:
        watcher.cancel()
    if fut in done:
        return fut.result()
    fut.cancel()  # a job not yet started is dropped by the worker
    if watcher in done:
        st.metrics.rejected.labels("disconnected").inc()
        logger.info("client of request %s disconnected before its result", rid)
        raise ApiError(499, "client closed the request", code="client_closed")
    st.metrics.rejected.labels("timeout").inc()
    raise ApiError(504, f"no result within {cfg.request_timeout_s:g} s (queue depth {st.batcher.queue_depth}); "
                        "retry later or send fewer texts", code="timeout")


# ---------------------------------------------------------------------------- endpoints
def _routes(app: FastAPI, st: ServeState) -> None:
    model, cfg = st.model, st.config

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=_ERRORS, tags=["embeddings"])
    async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        """OpenAI-compatible dense embeddings (the official ``openai`` client works unchanged)."""
        texts = _texts(body.input)
        _check_sizes(st, texts, "input")
        if body.dimensions is not None and body.dimensions != model.hidden_size:
            raise ApiError(400, f"dimensions: this model returns {model.hidden_size}-dimensional vectors and cannot "
                                f"shorten them; omit dimensions or pass {model.hidden_size}", param="dimensions")
        ids = await _tokenize(st, texts, st.default_max_length)
        out = await _run(st, request, ids, dense=True)
        name = body.model or cfg.model_name
        fmt = body.encoding_format

        def render() -> dict[str, Any]:
            dense = out.dense
            vecs = [_b64(v, "float32") for v in dense] if fmt == "base64" else dense.tolist()
            return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v}
                                               for i, v in enumerate(vecs)], "model": name, "usage": _usage(out)}

        return await _json(st, render)

    @app.post("/encode", response_model=EncodeResponse, responses=_ERRORS, tags=["embeddings"])
    async def encode(body: EncodeRequest, request: Request) -> Response:
        """Dense vectors, lexical weights (token id → weight, optionally token text → weight) and ColBERT arrays."""
        texts = _texts(body.input)
        _check_sizes(st, texts, "input")
        want_sparse = body.sparse or body.sparse_tokens
        if not (body.dense or want_sparse or body.colbert):
            raise ApiError(400, "dense: nothing to return; set at least one of dense, sparse, sparse_tokens, colbert",
                           param="dense")
        max_length = _max_length(st, body.max_length, "max_length")
        ids = await _tokenize(st, texts, max_length, body.mcls)
        out = await _run(st, request, ids, mcls=body.mcls, dense=body.dense, sparse=want_sparse, colbert=body.colbert)
        name = body.model or cfg.model_name

        def render() -> dict[str, Any]:
            data = []
            for i in range(len(texts)):
                item: dict[str, Any] = {"index": i, "n_tokens": int(out.n_tokens[i])}
                if body.dense:
                    v = out.dense[i]
                    item["dense"] = _b64(v, "float32") if body.encoding_format == "base64" else v.tolist()
                if want_sparse:
                    tid, w = out.lexical.row(i)
                    weights = dict(zip([str(t) for t in tid.tolist()], w.tolist(), strict=True))
                    if body.sparse:
                        item["sparse"] = weights
                    if body.sparse_tokens:
                        item["sparse_tokens"] = model.convert_id_to_token(weights)
                if body.colbert:
                    c = out.colbert[i]
                    item["colbert"] = {"dtype": body.colbert_dtype, "shape": list(c.shape),
                                       "data": _b64(c, body.colbert_dtype)}
                data.append(item)
            return {"object": "list", "data": data, "model": name, "usage": _usage(out)}

        return await _json(st, render)

    @app.post("/score", response_model=ScoreResponse, responses=_ERRORS, tags=["scoring"])
    async def score(body: ScoreRequest, request: Request) -> Response:
        """The five ``compute_score`` scores (colbert, sparse, dense, sparse+dense, colbert+sparse+dense) per pair."""
        pairs = body.pairs
        if len(pairs) > cfg.max_texts_per_request:
            raise ApiError(413, f"pairs: {len(pairs)} pairs, more than the limit of {cfg.max_texts_per_request} per "
                                "request", param="pairs", code="too_many_inputs")
        for i, p in enumerate(pairs):
            for j, t in enumerate(p):
                if len(t) > cfg.max_chars_per_text:
                    raise ApiError(413, f"pairs[{i}][{j}]: {len(t)} characters, more than the limit of "
                                        f"{cfg.max_chars_per_text}", param=f"pairs[{i}][{j}]", code="input_too_long")
        mq = _max_length(st, body.max_query_length, "max_query_length")
        mp = _max_length(st, body.max_passage_length, "max_passage_length")
        weights = body.weights or list(DEFAULT_WEIGHTS)
        if weights[0] + weights[1] <= 0:
            raise ApiError(400, "weights: the dense and sparse weights must not both be 0 (sparse+dense would be "
                                "0/0)", param="weights")
        # each distinct text encoded once, as compute_score does
        queries, qi = np.unique(np.array([p[0] for p in pairs], dtype=object), return_inverse=True)
        passages, pi = np.unique(np.array([p[1] for p in pairs], dtype=object), return_inverse=True)
        ids = await _tokenize(st, list(queries), mq) + await _tokenize(st, list(passages), mp)
        out = await _run(st, request, ids, dense=True, sparse=True, colbert=True)
        nq = len(queries)
        qo, po = slice_output(out, 0, nq), slice_output(out, nq, len(ids))
        name = body.model or cfg.model_name

        def render() -> dict[str, Any]:
            scores = pair_scores(qo, po, qi.ravel(), pi.ravel(), weights)
            return {"scores": {k: [float(x) for x in v] for k, v in scores.items()}, "model": name,
                    "usage": _usage(out)}

        return await _json(st, render)

    @app.post("/search", response_model=SearchResponse, responses={**_ERRORS, 404: {"model": ErrorResponse}},
              tags=["search"])
    async def search(body: SearchRequest, request: Request) -> Response:
        """Top-k documents of the server's index (started with ``--index``) per query."""
        index = st.index
        if index is None:
            raise ApiError(404, "search: this server has no index (start it with --index DIR)", code="no_index")
        queries = _texts(body.queries)
        _check_sizes(st, queries, "queries")
        if body.k > cfg.max_k:
            raise ApiError(400, f"k: at most {cfg.max_k}, got {body.k}", param="k")
        need = search_needs(body.mode, index.multivec is not None)
        if "colbert" in need and index.multivec is None:
            raise ApiError(400, f"mode: {body.mode!r} needs token vectors, but the index has none (built with "
                                "multivec='none'); use dense, sparse, dense+sparse or rrf", param="mode")
        max_length = _max_length(st, body.max_length, "max_length")
        ids = await _tokenize(st, queries, max_length)
        special = model.tokenizer.special.unused
        for i, toks in enumerate(ids):
            if all(t in special for t in toks):
                param = "queries" if isinstance(body.queries, str) else f"queries[{i}]"
                raise ApiError(400, f"{param}: only special tokens; nothing to search for", param=param)
        out = await _run(st, request, ids, dense="dense" in need, sparse="sparse" in need,
                         colbert="colbert" in need)

        def run_search() -> list:
            with st.search_lock:
                return index.search(out, k=body.k, mode=body.mode, weights=body.weights)

        try:
            hits = await st.run(run_search)
        except ValueError as e:
            param = "weights" if "weight" in str(e) else None
            raise ApiError(400, f"{param + ': ' if param else ''}{e}", param=param) from None
        name = body.model or cfg.model_name

        def render() -> dict[str, Any]:
            results = [[{"id": h.id, "score": float(h.score), "text": h.text, "metadata": h.metadata,
                         "scores": h.scores} for h in per_query] for per_query in hits]
            return {"results": results, "model": name, "usage": _usage(out)}

        return await _json(st, render)

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers (no API key needed)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def ready() -> Response:
        """Readiness: the model is loaded and its worker takes requests (no API key needed)."""
        if not st.batcher.accepting:
            raise ApiError(503, "not ready: the model worker is starting or shutting down", code="not_ready",
                           headers={"Retry-After": str(cfg.retry_after_s)})
        return await _json(st, lambda: {"status": "ready", "model": cfg.model_name,
                                        "queue_depth": st.batcher.queue_depth, "index": st.index is not None})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(st.metrics.render(), media_type=st.metrics.content_type)
