"""Encode a sharded corpus on a Ray cluster: a pool of model replicas (actors), one output file per part.

::

    res = encode_shards("corpus/*.jsonl", "encoded/", "m3embed-small", workers=4, threads_per_worker=2)
    idx = M3Index.build("corpus/", model, "my-index", engine="ray", ray_options={"address": "auto"})

Why Ray core actors and not Ray Data's ``read_json`` / ``map_batches``: the unit of work here is a
*part* (a fixed row range of one shard) whose output must be written once, atomically, under a
fixed name, with its sha256 recorded in a manifest so that a rerun can skip it. Ray Data's blocks
do not follow shard boundaries, its ``write_*`` outputs are not tied to input row ranges (no
checksum per range, no skip on rerun), and a retried block would leave a second output file.
So each worker reads its own part straight from the file (byte range for ``.jsonl``, row groups
for ``.parquet``, planned once by the driver) and writes that part's parquet file; the driver
only schedules parts, retries them and keeps the manifest. Inputs and the output directory must
therefore be reachable at the same path from every node (one machine, or a shared filesystem).

Exactly-once rows under failures. A worker process that dies (crash, OOM kill, node loss) is
restarted by Ray (actor ``max_restarts``) and its in-flight call is re-run (``max_task_retries``);
if that budget is spent the driver resubmits the part to another worker (``part_retries``). This
is at-least-once *execution*, but the *output* of a part is a pure function of (input rows, model,
settings) written by renaming a complete temp file onto a fixed name: a re-run either finds no
file (the dead attempt's temp file is discarded) or replaces it with identical content, and the
manifest holds one entry per part, added only by the driver once a call returned. Every row is
therefore in exactly one verified output file, once, whatever was retried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .shards import (
    EncodeSettings,
    Part,
    clean_parts_dir,
    discover_shards,
    entry_problem,
    ingest_encoded,
    part_records,
    plan_parts,
    read_manifest,
    write_manifest,
    write_part_output,
)

if TYPE_CHECKING:
    from ..index.core import M3Index
    from ..model import M3Model

logger = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'm3embed[ray]'"
LOCAL_OBJECT_STORE = 512 * 2**20  # outputs go to files, not through the object store: keep it small


class RayConnectError(ConnectionError):
    """The Ray cluster named by ``address`` cannot be reached."""


def require_ray() -> Any:
    """The ``ray`` module, or an ``ImportError`` naming the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"the Ray engine needs Ray: {RAY_EXTRA} (or pip install 'ray[data]')") from e
    return ray


@dataclass
class RayEncodeResult:
    """What a run did. Rates are over ``encode_s`` (first part submitted → last part written)."""

    out_dir: Path
    rows_total: int
    rows_encoded: int
    parts_total: int
    parts_encoded: int
    parts_skipped: int
    tokens_encoded: int
    workers: int
    threads_per_worker: int
    startup_s: float = 0.0  # cluster connect + workers loading the model
    encode_s: float = 0.0
    total_s: float = 0.0
    worker_restarts: int = 0  # worker processes replaced (seen as a new pid behind the same actor)
    part_retries: int = 0  # parts resubmitted by the driver after Ray's own retries were spent
    worker_peak_rss_mib: list[float] = field(default_factory=list)
    worker_cpu_s: float = 0.0  # CPU time the workers spent in the parts of this run
    fingerprint: dict[str, Any] | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows_encoded / self.encode_s if self.encode_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_encoded / self.encode_s if self.encode_s > 0 else 0.0


# ---------------------------------------------------------------------------------------- worker (Ray actor)
class EncodeWorker:
    """One model replica: encodes whole parts and writes their output files (wrapped by ``ray.remote``)."""

    def __init__(self, source: str, name: str, device: str, dtype: str | None, precision: str | None,
                 threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        from transformers.utils import logging as hf_logging

        from ..index.core import model_fingerprint
        from ..model import M3Model

        hf_logging.disable_progress_bar()
        self.model = M3Model.from_pretrained(source, device=device, dtype=dtype, precision=precision)
        self.fingerprint = model_fingerprint(self.model)
        self.fingerprint["name"] = name  # as the user named it (a model name, not this node's cache path)
        self.crash: tuple[str, int] | None = None
        self.batches = 0

    def info(self) -> dict[str, Any]:
        import torch

        return {"pid": os.getpid(), "host": socket.gethostname(), "fingerprint": self.fingerprint,
                "threads": torch.get_num_threads()}

    def _batch_done(self, n: int) -> None:
        self.batches += 1
        if self.crash is not None and self.batches >= self.crash[1]:
            marker = Path(self.crash[0])
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # a hard crash: no exception, no cleanup

    def encode_part(self, part: Part, out_dir: str, settings: dict[str, Any], batch_size: int,
                    crash: tuple[str, int] | None = None) -> dict[str, Any]:
        """Encode one part and write its output file; ``crash`` is a test hook: (marker file, batch n)
        makes the process exit after the n-th batch of a part, once (while the marker does not exist)."""
        start, cpu0 = time.perf_counter(), _cpu_s()
        self.crash, self.batches = crash, 0
        s = EncodeSettings(**settings)
        ids, texts, metas = part_records(part, s)
        out = self.model.encode(texts, batch_size=batch_size, max_length=s.max_length, return_dense=s.dense,
                                return_sparse=s.sparse, return_colbert=s.colbert, mcls=s.mcls,
                                truncation=s.truncation, progress=self._batch_done)
        rows = np.arange(part.start, part.stop, dtype=np.int64)
        nbytes, sha = write_part_output(
            Path(out_dir) / part.file, ids, rows, out, texts if s.store_text else None,
            metas if s.store_text else None, vocab_size=self.model.tokenizer.vocab_size,
            hidden_size=self.model.hidden_size, colbert_dim=self.model.colbert_dim)
        return {"key": part.key, "file": part.file, "start": part.start, "stop": part.stop, "rows": part.rows,
                "bytes": nbytes, "sha256": sha, "n_tokens": int(out.n_tokens.sum()),
                "seconds": round(time.perf_counter() - start, 4), "cpu_s": round(_cpu_s() - cpu0, 4),
                "pid": os.getpid(), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------------- cluster
def _probe(address: str, timeout: float) -> None:
    """Fail fast on an unreachable ``host:port`` (``ray.init`` itself retries for 20 s or more)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep:
        host, port = target, "10001" if address.startswith("ray://") else "6379"
    try:
        port_n = int(port)
    except ValueError:
        raise RayConnectError(f"Ray address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT") from None
    try:
        with socket.create_connection((host or "127.0.0.1", port_n), timeout=timeout):
            pass
    except OSError as e:
        raise RayConnectError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with `ray start --head` "
            "on that machine, or check the address and the firewall") from None
    if not address.startswith("ray://"):
        _probe_gcs(address, f"{host or '127.0.0.1'}:{port_n}", timeout)


def _probe_gcs(address: str, target: str, timeout: float) -> None:
    """Ask the GCS for its cluster id: something else listening on the port (a proxy, another service)
    answers UNIMPLEMENTED at once, where ``ray.init`` would retry for ~20 s before giving up."""
    try:
        import grpc  # a dependency of ray
    except ImportError:  # pragma: no cover
        return
    channel = grpc.insecure_channel(target)
    try:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        call(b"", timeout=timeout)  # an empty GetClusterIdRequest
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise RayConnectError(f"cannot reach a Ray cluster at {address} ({code.name}: {e.details()}); start "
                                  "one with `ray start --head` on that machine, or check the address") from None
        if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL):
            raise RayConnectError(f"{address} answers, but it is not a Ray cluster's GCS ({code.name}: "
                                  f"{e.details()}); pass the head node's GCS port (`ray start --head` prints it, "
                                  "default 6379)") from None
        # anything else (e.g. UNAUTHENTICATED on a token-auth cluster) is a GCS: let ray.init deal with it
    finally:
        channel.close()


def connect(ray: Any, address: str | None, *, num_cpus: int | None, num_gpus: int | None,
            connect_timeout: float = 5.0, init_kwargs: Mapping[str, Any] | None = None) -> bool:
    """Join ``address`` ("auto", HOST:PORT, ray://HOST:PORT) or start a local cluster (``None``).

    Returns whether this call connected (and so should disconnect); an already initialised Ray is reused.
    """
    if ray.is_initialized():
        return False
    kwargs = {"logging_level": logging.WARNING, **dict(init_kwargs or {})}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("object_store_memory", LOCAL_OBJECT_STORE)
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
        return True
    if address != "auto":
        _probe(address, connect_timeout)
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:
        raise RayConnectError(f"cannot connect to the Ray cluster at {address!r}: {type(e).__name__}: {e}") from e
    return True


def _resources(ray: Any, started: bool, workers: int | None, threads: int | None,
               gpus: float) -> tuple[int, int]:
    """(workers, threads per worker) from what was asked and what the cluster has."""
    cluster = ray.cluster_resources()
    cpus = int(cluster.get("CPU", 0))
    if gpus > 0:
        threads = threads or 1
        workers = workers or max(1, int(cluster.get("GPU", 0) // gpus))
        need_gpu = workers * gpus
        if cluster.get("GPU", 0) < need_gpu:
            msg = f"{workers} workers × {gpus} GPU need {need_gpu:g} GPUs; the cluster has {cluster.get('GPU', 0):g}"
            if started:
                raise ValueError(msg)
            logger.warning("%s: waiting for the autoscaler", msg)
    else:
        if threads is None:
            threads = max(1, cpus // workers) if workers else max(1, min(4, cpus))
        workers = workers or max(1, cpus // threads)
    if workers * threads > cpus:
        msg = f"{workers} workers × {threads} threads need {workers * threads} CPUs; the cluster has {cpus}"
        if started:
            raise ValueError(msg)
        logger.warning("%s: waiting for the autoscaler", msg)
    elif gpus == 0 and workers * threads > ray.available_resources().get("CPU", 0):
        logger.warning("%d workers × %d threads need %d CPUs and %g are free now: waiting for the rest",
                       workers, threads, workers * threads,
                       ray.available_resources().get("CPU", 0))
    return workers, threads


# ---------------------------------------------------------------------------------------- the pool
class EncodePool:
    """Ray workers that hold a loaded model, for one :func:`encode_shards` call or several.

    ``encode_shards`` makes one per call when none is given; keep one open to encode several
    corpora without reloading the model (``with EncodePool(...) as pool: encode_shards(..., pool=pool)``).
    Arguments as in :func:`encode_shards`. :meth:`close` stops the workers (and the local cluster,
    if this pool started it).
    """

    def __init__(self, model: str | os.PathLike[str] | M3Model, *, address: str | None = None,
                 workers: int | None = None, threads_per_worker: int | None = None, gpus_per_worker: float = 0.0,
                 device: str | None = None, dtype: str | None = None, precision: str | None = None,
                 max_restarts: int = 3, max_task_retries: int = 3, startup_timeout: float = 600.0,
                 connect_timeout: float = 5.0, init_kwargs: Mapping[str, Any] | None = None) -> None:
        ray = require_ray()
        from ray.exceptions import GetTimeoutError, RayActorError

        t0 = time.perf_counter()
        source, dtype, precision, expect_fp = _model_source(model, dtype, precision)
        self.name = source
        self.expect_fingerprint = expect_fp
        device = device or ("cuda" if gpus_per_worker > 0 else "cpu")
        local_cpus = None
        if address is None and not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
            local_cpus = max(os.cpu_count() or 1, (workers or 1) * (threads_per_worker or 1))
        if local_cpus is not None and not Path(source).expanduser().is_dir():
            # a named model on this machine: assemble / download it once here, not in every worker at once
            from ..checkpoint import resolve

            source = str(resolve(source))
        self.started = connect(ray, address, num_cpus=local_cpus, num_gpus=None, connect_timeout=connect_timeout,
                               init_kwargs=init_kwargs)
        self.actors: list[Any] = []
        try:
            self.workers, self.threads = _resources(ray, local_cpus is not None, workers, threads_per_worker,
                                                    gpus_per_worker)
            remote = ray.remote(EncodeWorker).options(num_cpus=self.threads, num_gpus=gpus_per_worker,
                                                      max_restarts=max_restarts, max_task_retries=max_task_retries)
            self.actors = [remote.remote(source, self.name, device, dtype, precision, self.threads)
                           for _ in range(self.workers)]
            try:
                infos = ray.get([a.info.remote() for a in self.actors], timeout=startup_timeout)
            except GetTimeoutError:
                raise RuntimeError(f"{self.workers} workers did not start within {startup_timeout:.0f} s (cluster "
                                   f"resources: {ray.cluster_resources()})") from None
            except RayActorError as e:
                raise RuntimeError(f"a worker failed to start (loading model {source!r}): {e}") from None
            fps = sorted({i["fingerprint"]["hash"] for i in infos})
            if len(fps) != 1:
                raise ValueError(f"the workers loaded different weights for model {self.name!r} (fingerprints "
                                 f"{fps}): the model files differ between machines")
            if expect_fp and expect_fp["hash"] != fps[0]:
                raise ValueError(f"the workers' model {self.name!r} (fingerprint {fps[0]}) is not the model passed "
                                 f"in ({expect_fp['hash']}): it was changed after loading; save it with "
                                 "save_pretrained(DIR) and pass DIR")
            self.fingerprint: dict[str, Any] = expect_fp or infos[0]["fingerprint"]
            self.pids: dict[int, set[int]] = {i: {info["pid"]} for i, info in enumerate(infos)}
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0

    def close(self) -> None:
        ray = require_ray()
        for a in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(a)
        self.actors = []
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False

    def __enter__(self) -> EncodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _model_source(model: Any, dtype: str | None, precision: str | None):
    """(name or path for the workers, dtype, precision, fingerprint to expect or None)."""
    if isinstance(model, str | os.PathLike):
        return os.fspath(model), dtype, precision, None
    from ..index.core import model_fingerprint

    source = getattr(model, "source", None)
    if not source:
        raise ValueError("the Ray engine loads the model in every worker by name or path, and this model has "
                         "none: save it with model.save_pretrained(DIR) and load it from DIR")
    if dtype is None and str(model.dtype) != "torch.float32":
        dtype = str(model.dtype).removeprefix("torch.")
    accel = model.__dict__.get("_accel")
    if precision is None and accel is not None:
        precision = accel.precision
    return str(source), dtype, precision, model_fingerprint(model)


def _user_error(e: Exception, part: Part) -> Exception:
    """The worker's own exception (bad record, bad model) without Ray's wrapper, naming the part."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, ValueError | FileNotFoundError | UnicodeDecodeError | ImportError):
        return cause
    return RuntimeError(f"encoding part {part.key} failed: {cause or e}")


# ---------------------------------------------------------------------------------------- driver
def encode_shards(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model: str | os.PathLike[str] | M3Model | None,
    *,
    dense: bool = True,
    sparse: bool = True,
    colbert: bool = False,
    max_length: int = 512,
    batch_size: int = 32,
    mcls: bool = False,
    truncation: bool = True,
    records: str = "field",
    field: str = "text",
    store_text: bool = True,
    part_rows: int = 2048,
    pool: EncodePool | None = None,
    overwrite: bool = False,
    verify: bool = True,
    show_progress: bool = True,
    part_retries: int = 2,
    on_part: Callable[[dict[str, Any]], None] | None = None,
    _crash: tuple[str, int] | None = None,
    **pool_options: Any,
) -> RayEncodeResult:
    """Encode ``.jsonl`` / ``.parquet`` shards with a pool of Ray workers into ``out_dir`` (resumable).

    ``inputs``: a file, a directory, a glob, or a list of them. ``model``: a checkpoint directory or
    a model name that every worker loads, or an ``M3Model`` (its ``source`` is loaded in the
    workers and their fingerprint must equal this model's); ``None`` with a ``pool``. ``records="field"``
    takes the text from ``field`` (ids from ``_id`` / ``id``, else ``<shard>:<row>``); ``"corpus"``
    uses ``M3Index.build``'s rules (id required, title prepended).

    Workers: an open :class:`EncodePool`, or ``pool_options`` to make one for this call —
    ``address`` (``None`` starts a local cluster, ``"auto"`` joins the running one, ``HOST:PORT`` /
    ``ray://HOST:PORT`` a remote one; unreachable: :class:`RayConnectError` within
    ``connect_timeout`` s), ``workers`` × ``threads_per_worker`` CPUs (torch threads per worker) or
    ``gpus_per_worker`` > 0 (one replica per GPU), ``device``, ``dtype``, ``precision``,
    ``max_restarts`` / ``max_task_retries`` (Ray's recovery of a dead worker), ``startup_timeout``,
    ``init_kwargs`` (for ``ray.init``). No worker starts when every part is already done.

    A rerun with the same settings skips every part whose output verifies (sha256 unless
    ``verify=False``) and encodes the rest; different settings or another model raise unless
    ``overwrite=True`` (which discards the old outputs). ``on_part(result)`` is called on the
    driver after each finished part (an exception there stops the run; finished parts are kept).
    """
    from ..index.storage import WriterLock

    t_start = time.perf_counter()
    settings = EncodeSettings(dense=dense, sparse=sparse, colbert=colbert, max_length=max_length, mcls=mcls,
                              truncation=truncation, records=records, field=field, store_text=store_text,
                              part_rows=part_rows)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unknown = set(pool_options) - _POOL_OPTIONS
    if unknown:
        raise TypeError(f"encode_shards() got unexpected keyword arguments {sorted(unknown)}")
    if pool is not None:
        if pool_options:
            raise ValueError(f"{sorted(pool_options)} configure a new pool; they cannot apply to the given pool")
        expect_fp = pool.fingerprint
        if model is not None and not isinstance(model, str | os.PathLike):
            _, _, _, fp = _model_source(model, None, None)
            if fp["hash"] != pool.fingerprint["hash"]:
                raise ValueError("the model passed in is not the pool's model (fingerprints differ)")
    elif model is None:
        raise ValueError("pass a model (or an open EncodePool)")
    else:
        expect_fp = None if isinstance(model, str | os.PathLike) else _model_source(model, None, None)[3]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(out)  # one driver per output directory
    try:
        manifest = read_manifest(out)
        if manifest is not None and overwrite:
            manifest = None
        if manifest is not None:
            _check_same_run(out, manifest, settings.as_dict(), expect_fp)
        shards = discover_shards(inputs)
        parts, shard_info = plan_parts(shards, part_rows, manifest["shards"] if manifest else None)
        old = manifest["parts"] if manifest else {}
        done: dict[str, dict[str, Any]] = {}
        todo: list[Part] = []
        for p in parts:
            entry = old.get(p.key)
            problem = entry_problem(out, p, entry, checksum=verify) if entry is not None else "not encoded yet"
            if problem is None:
                done[p.key] = entry
            else:
                if entry is not None:
                    logger.warning("re-encoding %s: %s", p.key, problem)
                todo.append(p)
        clean_parts_dir(out, {p.file for p in parts if p.key in done})
        state = {"settings": settings.as_dict(), "model": (manifest or {}).get("model") or expect_fp,
                 "shards": shard_info, "plan": [p.key for p in parts], "parts": done}
        write_manifest(out, state)
        res = RayEncodeResult(out, sum(p.rows for p in parts), 0, len(parts), 0, len(done), 0, 0, 0,
                              fingerprint=state["model"])
        if todo:
            own = pool is None
            if own:
                pool = EncodePool(model, **pool_options)  # type: ignore[arg-type]
            try:
                _check_pool_model(out, state, pool)
                res.workers, res.threads_per_worker = len(pool.actors), pool.threads
                res.startup_s = pool.startup_s if own else 0.0
                _schedule(pool, res, state, out, todo, settings, batch_size, part_retries, show_progress, on_part,
                          _crash)
            finally:
                if own:
                    pool.close()
        res.total_s = time.perf_counter() - t_start
        return res
    finally:
        lock.release()


_POOL_OPTIONS = {"address", "workers", "threads_per_worker", "gpus_per_worker", "device", "dtype", "precision",
                 "max_restarts", "max_task_retries", "startup_timeout", "connect_timeout", "init_kwargs"}


def _check_same_run(out: Path, manifest: dict[str, Any], settings: dict[str, Any],
                    expect_fp: dict[str, Any] | None) -> None:
    old = manifest["settings"]
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if diff:
        what = ", ".join(f"{k}: {old.get(k)!r} → {settings.get(k)!r}" for k in diff)
        raise ValueError(f"{out}: holds outputs encoded with other settings ({what}); use another directory "
                         "or pass overwrite=True (--overwrite) to discard them")
    fp = manifest.get("model")
    if fp and expect_fp and fp.get("hash") != expect_fp.get("hash"):
        raise ValueError(f"{out}: holds outputs of another model ({fp.get('name')}, hash {fp.get('hash')}); use "
                         "another directory or pass overwrite=True (--overwrite)")


def _check_pool_model(out: Path, state: dict[str, Any], pool: EncodePool) -> None:
    fp = state.get("model")
    if fp and fp.get("hash") != pool.fingerprint["hash"]:
        raise ValueError(f"{out}: holds outputs of another model ({fp.get('name')}, fingerprint {fp.get('hash')}); "
                         "use another directory or pass overwrite=True (--overwrite)")
    if not fp:
        state["model"] = pool.fingerprint


def _schedule(pool: EncodePool, res: RayEncodeResult, state: dict[str, Any], out: Path, todo: list[Part],
              settings: EncodeSettings, batch_size: int, part_retries: int, show_progress: bool,
              on_part: Callable[[dict[str, Any]], None] | None, crash: tuple[str, int] | None) -> None:
    """One part in flight per worker; finished parts go into the manifest (written at most every second)."""
    ray = require_ray()
    from ray.exceptions import RayActorError, RayTaskError

    res.fingerprint = state["model"]
    actors = pool.actors
    args = (str(out.resolve()), settings.as_dict(), batch_size, crash)
    queue = deque(todo)
    idle = list(range(len(actors)))
    alive = set(idle)
    pending: dict[Any, tuple[str, int, Part | None]] = {}
    attempts: dict[str, int] = {}
    probes: dict[int, int] = {}
    peak: dict[int, float] = {}
    pids_before = sum(len(s) for s in pool.pids.values())
    last_write = time.monotonic()
    t_enc = time.perf_counter()
    rows_before = sum(e["rows"] for e in state["parts"].values())
    progress, task = _progress(show_progress, res.rows_total, rows_before)
    try:
        with progress:
            while queue or any(kind == "part" for kind, _, _ in pending.values()):
                while idle and queue:
                    i = idle.pop()
                    p = queue.popleft()
                    pending[actors[i].encode_part.remote(p, *args)] = ("part", i, p)
                if not pending:
                    raise RuntimeError(f"every worker died; {len(queue)} parts were not encoded (rerun to resume)")
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    kind, i, p = pending.pop(ref)
                    try:
                        r = ray.get(ref)
                    except RayActorError as e:
                        if kind == "probe":
                            probes[i] = probes.get(i, 0) + 1
                            if type(e).__name__ == "ActorUnavailableError" and probes[i] <= 5:
                                time.sleep(1.0)  # temporarily unreachable (restarting, network): ask again
                                pending[actors[i].info.remote()] = ("probe", i, None)
                                continue
                            alive.discard(i)  # gone for good (restarts spent)
                            logger.warning("worker %d is dead (%s); %d left", i, type(e).__name__, len(alive))
                            continue
                        attempts[p.key] = attempts.get(p.key, 0) + 1
                        if attempts[p.key] > part_retries:
                            raise RuntimeError(f"part {p.key} failed {attempts[p.key]} times: its worker died "
                                               f"each time ({e}); rerun to resume") from None
                        res.part_retries += 1
                        queue.appendleft(p)
                        # is the worker still usable (restarted) or dead? ask it without blocking the loop
                        pending[actors[i].info.remote()] = ("probe", i, None)
                        continue
                    except RayTaskError as e:
                        raise _user_error(e, p) from None
                    pool.pids[i].add(r["pid"])
                    idle.append(i)
                    if kind == "probe":
                        continue
                    peak[i] = max(peak.get(i, 0.0), r["peak_rss_mib"])
                    state["parts"][r["key"]] = {k: r[k] for k in ("file", "start", "stop", "rows", "bytes", "sha256",
                                                                  "n_tokens")}
                    res.parts_encoded += 1
                    res.rows_encoded += r["rows"]
                    res.tokens_encoded += r["n_tokens"]
                    res.worker_cpu_s += r["cpu_s"]
                    res.encode_s = time.perf_counter() - t_enc
                    if time.monotonic() - last_write >= 1.0:
                        write_manifest(out, state)
                        last_write = time.monotonic()
                    if on_part is not None:
                        on_part(r)
                elapsed = max(time.perf_counter() - t_enc, 1e-9)
                progress.update(task, completed=rows_before + res.rows_encoded,
                                parts=f"{res.parts_skipped + res.parts_encoded}/{res.parts_total}",
                                rate=f"{res.rows_encoded / elapsed:,.1f} rows/s, "
                                     f"{res.tokens_encoded / elapsed:,.0f} tok/s")
    finally:
        for ref, (kind, _, _) in pending.items():  # stopped early: do not leave parts running on a kept pool
            if kind == "part":
                with contextlib.suppress(Exception):  # finished meanwhile, or not cancellable: harmless
                    ray.cancel(ref)
        write_manifest(out, state)
        res.worker_restarts = sum(len(s) for s in pool.pids.values()) - pids_before
        res.worker_peak_rss_mib = [round(peak[i], 1) for i in sorted(peak)]


def _progress(show: bool, total: int, completed: int):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("[bold]encoding"), BarColumn(),
                        TextColumn("{task.completed:,}/{task.total:,} rows"), TextColumn("parts {task.fields[parts]}"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=Console(stderr=True),
                        disable=not show)
    task = progress.add_task("encode", total=total, completed=completed, parts="", rate="")
    return progress, task


# ---------------------------------------------------------------------------------------- index build
def build_index(cls: type[M3Index], corpus: Any, model: M3Model, path: str | os.PathLike[str] | None, *,
                batch_size: int = 32, max_length: int = 512, show_progress: bool = True,
                from_encoded: str | os.PathLike[str] | None = None, ray_options: Mapping[str, Any] | None = None,
                index_options: Mapping[str, Any] | None = None, codec_sample: int = 1024) -> M3Index:
    """``M3Index.build(..., engine="ray")`` / ``from_encoded=DIR``: encode on Ray (unless given), then ingest
    (a residual codebook is fitted on ``codec_sample`` documents drawn across the encoded parts).

    ``ray_options``: keyword arguments of :func:`encode_shards` (``address``, ``workers``,
    ``threads_per_worker``, ``part_rows``, …) plus ``encoded_dir`` (where the part outputs go; default
    ``<path>.encoded`` beside the index, kept on failure so that a rerun resumes, deleted after a
    successful build unless ``keep_encoded=True``).
    """
    import shutil
    import tempfile

    from ..index.core import _split_options

    index_options = dict(index_options or {})
    opts = dict(ray_options or {})
    encoded = from_encoded
    remove_after = False
    if encoded is None:
        paths = [corpus] if isinstance(corpus, str | os.PathLike) else corpus
        if not isinstance(paths, list | tuple) or not paths or not all(isinstance(p, str | os.PathLike)
                                                                       for p in paths):
            raise TypeError("engine='ray' reads shards: pass a .jsonl / .parquet file, a directory or a glob of them "
                            f"(got {type(corpus).__name__})")
        keep = bool(opts.pop("keep_encoded", False))
        encoded = opts.pop("encoded_dir", None)
        temporary = False
        if encoded is None:
            temporary = path is None
            encoded = Path(f"{Path(path)}.encoded") if path is not None else Path(tempfile.mkdtemp(prefix="m3enc-"))
            remove_after = not keep
        parsed = _split_options(index_options)
        try:
            encode_shards(corpus, encoded, model, dense=True, sparse=True, colbert=parsed["multivec"] is not None,
                          max_length=max_length, batch_size=batch_size, records="corpus",
                          store_text=parsed["store_text"], show_progress=show_progress, **opts)
        except BaseException:
            if temporary:  # nothing to resume into
                shutil.rmtree(encoded, ignore_errors=True)
            raise
    elif opts:
        raise ValueError("ray_options apply to encoding; with from_encoded nothing is encoded")
    idx = cls.create(path, model, **index_options)
    try:
        ingest_encoded(idx, encoded, codec_sample=codec_sample)
        idx.save()
    except BaseException:
        idx.close(discard=True)
        raise
    if remove_after:
        shutil.rmtree(encoded, ignore_errors=True)
    return idx
