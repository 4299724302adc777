"""A persistent multi-process encoding pool: one worker per device, each with its own model copy.

Unlike the reference, the pool is created explicitly (nothing grabs every GPU by default), is
reused across calls, surfaces a worker's exception in the caller, and shuts down cleanly.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from .output import M3Output
from .tokenize import check_texts

if TYPE_CHECKING:
    from .model import M3Model

logger = logging.getLogger(__name__)


def _worker(model: M3Model, device: str, threads: int | None, inbox: Any, outbox: Any) -> None:
    if threads:
        torch.set_num_threads(threads)
    try:
        model = model.to(device)
    except Exception as e:  # report instead of dying silently
        outbox.put((-1, None, f"worker on {device} failed to start: {type(e).__name__}: {e}"))
        return
    while True:
        job = inbox.get()
        if job is None:
            return
        chunk_id, texts, kwargs = job
        try:
            out = model.encode(texts, **kwargs)
            outbox.put((chunk_id, out, None))
        except Exception as e:
            outbox.put((chunk_id, None, f"{type(e).__name__}: {e}"))


class EncodePool:
    """Encode with several processes, e.g. ``EncodePool(model, ["cuda:0", "cuda:1"])``.

    On CPU, ``["cpu", "cpu"]`` with ``threads_per_worker`` splits the cores between workers.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, model: M3Model, devices: Sequence[str], *, threads_per_worker: int | None = None) -> None:
        if not devices:
            raise ValueError("EncodePool needs at least one device")
        ctx = mp.get_context("spawn")
        cpu_model = model.to("cpu")
        cpu_model.share_memory()
        self._inbox = ctx.Queue()
        self._outbox = ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker, args=(cpu_model, str(d), threads_per_worker, self._inbox, self._outbox),
                        daemon=True)
            for d in devices
        ]
        for p in self._procs:
            p.start()
        self.devices = [str(d) for d in devices]

    def encode(self, texts: Sequence[str], *, chunk_size: int | None = None, timeout: float | None = None,
               **kwargs: Any) -> M3Output:
        """Split ``texts`` into chunks, encode them on the workers and join the results in order.

        Keyword arguments are those of :func:`m3embed.encode.encode`. Raises ``RuntimeError`` with
        the worker's message if any chunk fails, ``TimeoutError`` if no result arrives in ``timeout`` s.
        """
        check_texts(texts)  # here, so an error names the index in the whole input, not in a chunk
        texts = list(texts)
        if not texts:
            return M3Output()
        size = chunk_size or -(-len(texts) // len(self._procs))
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        for cid, chunk in enumerate(chunks):
            self._inbox.put((cid, chunk, kwargs))
        results: dict[int, M3Output] = {}
        errors = []
        while len(results) + len(errors) < len(chunks):
            try:
                cid, out, err = self._outbox.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no result from the encode pool within {timeout} s") from None
            if err is not None:
                if cid < 0:
                    self.close()
                    raise RuntimeError(err)
                errors.append(f"chunk {cid} (texts {cid * size}…{cid * size + len(chunks[cid]) - 1}): {err}")
            else:
                results[cid] = out
        if errors:
            raise RuntimeError("encode pool failed: " + "; ".join(errors))
        return M3Output.concat([results[i] for i in range(len(chunks))])

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for _ in self._procs:
            self._inbox.put(None)
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        self._procs = []

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
