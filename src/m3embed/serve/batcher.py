"""Dynamic batching: requests queue token ids, one worker thread owns the model and runs them in rounds.

The asyncio side only tokenises (on arrival, so that rounds are sized by tokens) and queues a
:class:`Job`; the worker thread takes every queued job that fits a token budget, waiting up to
``max_wait_ms`` for more when the queue is short, and encodes the round with
:func:`m3embed.encode.encode_ids` — the offline ``encode`` forward path, which sorts the round's texts
by length and splits it into forward passes of at most ``max_batch_tokens`` padded tokens.
Each job gets its rows back through a ``concurrent.futures.Future``; a job whose future is
cancelled (client gone, timed out) before its round starts leaves the queue at once and is never
run (the worker also skips any cancelled job it meets when forming a round).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..encode import encode_ids
from ..output import ColbertVectors, LexicalWeights, M3Output
from .config import ServeConfig
from .metrics import Metrics

if TYPE_CHECKING:
    from ..model import M3Model

logger = logging.getLogger("m3embed.serve")


def _malloc_trim() -> Callable[[int], object] | None:
    """glibc's ``malloc_trim(0)`` (None elsewhere): hands freed heap pages back to the OS."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()
TRIM_INTERVAL_S = 1.0  # at most one trim per second, and only when the queue is empty


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already (answer 503 with Retry-After)."""


class ShuttingDown(Exception):
    """The batcher is draining or stopped and takes no new work (answer 503)."""


@dataclass(eq=False)
class Job:
    """One request's texts, tokenised, and what it wants back."""

    ids: list[list[int]]
    mcls: bool
    dense: bool
    sparse: bool
    colbert: bool
    request_id: str | None = None
    n_tokens: int = 0
    enqueued: float = 0.0
    future: Future = field(default_factory=Future)


def slice_output(out: M3Output, start: int, stop: int, *, dense: bool = True, sparse: bool = True,
                 colbert: bool = True) -> M3Output:
    """Rows ``start:stop`` of ``out`` as an ``M3Output`` of their own (views; representations not asked for: None)."""
    res = M3Output(n_tokens=None if out.n_tokens is None else out.n_tokens[start:stop])
    if dense and out.dense is not None:
        res.dense = out.dense[start:stop]
    if sparse and out.lexical is not None:
        lw = out.lexical
        lo, hi = int(lw.indptr[start]), int(lw.indptr[stop])
        res.lexical = LexicalWeights(lw.indptr[start : stop + 1] - lo, lw.ids[lo:hi], lw.weights[lo:hi], lw.vocab_size)
    if colbert and out.colbert is not None:
        cv = out.colbert
        lo, hi = int(cv.offsets[start]), int(cv.offsets[stop])
        res.colbert = ColbertVectors(cv.data[lo:hi], cv.offsets[start : stop + 1] - lo)
    return res


class Batcher:
    """Bounded request queue + the model worker thread.

    ``encode_fn(model, ids, *, batch_size, max_batch_tokens, return_dense, return_sparse,
    return_colbert, mcls) -> M3Output`` runs a round (default :func:`m3embed.encode.encode_ids`).
    """

    def __init__(self, model: M3Model, config: ServeConfig, metrics: Metrics,
                 encode_fn: Callable[..., M3Output] | None = None) -> None:
        self.model = model
        self.config = config
        self.metrics = metrics
        self._encode = encode_fn or encode_ids
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.rounds = 0  # worker rounds run (tests, logs)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._worker, name="m3embed-model-worker", daemon=True)
        self._thread.start()
        self.metrics.ready.set(1)

    @property
    def accepting(self) -> bool:
        """True while the worker runs and new work is taken."""
        return self._thread is not None and self._thread.is_alive() and not self._closing

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking work, let the worker finish every queued job, join it; False if it did not end in time."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.metrics.ready.set(0)
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the asyncio side
    def submit(self, ids: list[list[int]], *, mcls: bool = False, dense: bool = True, sparse: bool = False,
               colbert: bool = False, request_id: str | None = None) -> Future:
        """Queue tokenised texts; the future resolves to their ``M3Output`` (rows in input order).

        Raises :class:`QueueFull` when ``max_queue`` requests wait already, :class:`ShuttingDown`
        once :meth:`close` was called. Cancel the future to withdraw the job before it runs.
        """
        job = Job(ids, mcls, dense, sparse, colbert, request_id, sum(len(x) for x in ids), time.monotonic())
        with self._cond:
            self._admit()
            self._queue.append(job)
            self._queued_tokens += job.n_tokens
            self._update_gauges()
            self._cond.notify()
        job.future.add_done_callback(lambda f: self._withdraw(job) if f.cancelled() else None)
        return job.future

    def _withdraw(self, job: Job) -> None:
        """A cancelled job leaves the queue at once: it no longer holds a place under ``max_queue``."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # the worker took it already (and dropped it, seeing it cancelled)
            self._queued_tokens -= job.n_tokens
            self._update_gauges()
        self.metrics.dropped.inc()
        logger.info("dropped a cancelled job (request %s) from the queue", job.request_id)

    def admit(self) -> None:
        """Raise :class:`QueueFull` / :class:`ShuttingDown` now if a submit would (cheap check before tokenising)."""
        with self._cond:
            self._admit()

    def _admit(self) -> None:
        if self._closing or self._thread is None:
            self.metrics.rejected.labels("shutting_down").inc()
            raise ShuttingDown("the server is shutting down")
        if len(self._queue) >= self.config.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFull(f"the request queue is full ({self.config.max_queue} requests waiting)")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ the worker thread
    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self._queue))
        self.metrics.queue_tokens.set(self._queued_tokens)

    def _round_budget(self) -> int:
        return self.config.max_batch_tokens * self.config.round_batches

    def _take_round(self) -> list[Job] | None:
        """Block until work is due; pop the jobs of one round (cancelled ones are dropped). None: stop."""
        budget = self._round_budget()
        wait = self.config.max_wait_ms / 1000.0
        with self._cond:
            while True:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return None  # closing and drained
                deadline = self._queue[0].enqueued + wait
                # a short queue waits (from its oldest arrival) for company; a full budget or shutdown runs now
                while self._queued_tokens < budget and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                jobs: list[Job] = []
                tokens = 0
                while self._queue and (not jobs or tokens + self._queue[0].n_tokens <= budget):
                    job = self._queue.popleft()
                    self._queued_tokens -= job.n_tokens
                    if not job.future.set_running_or_notify_cancel():
                        self.metrics.dropped.inc()
                        logger.info("dropped a cancelled job (request %s) before running it", job.request_id)
                        continue
                    jobs.append(job)
                    tokens += job.n_tokens
                self._update_gauges()
                if jobs:
                    return jobs

    def _worker(self) -> None:
        last_trim = 0.0
        try:
            while True:
                jobs = self._take_round()
                if jobs is None:
                    return
                self._run_round(jobs)
                # forward passes of varying shapes leave freed activations in malloc's heap: the RSS would
                # stay at its high-water mark after a burst; give the pages back whenever the queue runs dry
                if _TRIM is not None and not self._queue and time.monotonic() - last_trim > TRIM_INTERVAL_S:
                    _TRIM(0)
                    last_trim = time.monotonic()
        except BaseException:  # pragma: no cover - a bug in the loop itself; fail the queue loudly
            logger.exception("the model worker died")
            with self._cond:
                self._closing = True
                while self._queue:
                    job = self._queue.popleft()
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(ShuttingDown("the model worker stopped"))
            self.metrics.ready.set(0)
            raise

    def _run_round(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        for job in jobs:
            self.metrics.queue_wait.observe(now - job.enqueued)
        groups: dict[bool, list[Job]] = {}
        for job in jobs:  # MCLS changes the pooling: one encode call per setting
            groups.setdefault(job.mcls, []).append(job)
        self.metrics.busy.set(1)
        try:
            for mcls, group in groups.items():
                self._run_group(group, mcls)
        finally:
            self.metrics.busy.set(0)
        self.rounds += 1

    def _run_group(self, group: list[Job], mcls: bool) -> None:
        ids = [seq for job in group for seq in job.ids]
        want = {k: any(getattr(j, k) for j in group) for k in ("dense", "sparse", "colbert")}
        n_tok = sum(j.n_tokens for j in group)
        t0 = time.perf_counter()
        try:
            out = self._encode(self.model, ids, batch_size=self.config.max_batch_size,
                               max_batch_tokens=self.config.max_batch_tokens, return_dense=want["dense"],
                               return_sparse=want["sparse"], return_colbert=want["colbert"], mcls=mcls)
        except Exception as e:
            logger.exception("a round of %d requests failed (requests %s)", len(group),
                             ", ".join(str(j.request_id) for j in group))
            for job in group:
                job.future.set_exception(e)
            return
        seconds = time.perf_counter() - t0
        m = self.metrics
        m.batch_texts.observe(len(ids))
        m.batch_tokens.observe(n_tok)
        m.batch_requests.observe(len(group))
        m.batch_seconds.observe(seconds)
        m.tokens.inc(n_tok)
        m.texts.inc(len(ids))
        m.tokens_per_second.set(n_tok / max(seconds, 1e-9))
        start = 0
        for job in group:
            n = len(job.ids)
            job.future.set_result(slice_output(out, start, start + n, dense=job.dense, sparse=job.sparse,
                                               colbert=job.colbert))
            start += n

