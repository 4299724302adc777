"""``m3embed serve``: the HTTP API (needs the ``serve`` extra: fastapi, uvicorn, prometheus_client)."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import MODEL_ENV, app, console, error, load_model

_NEEDED = ("fastapi", "uvicorn", "prometheus_client")


def _missing_deps() -> list[str]:
    import importlib.util

    return [m for m in _NEEDED if importlib.util.find_spec(m) is None]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help=f"Checkpoint dir, hub id or registry name (env {MODEL_ENV})")
    ] = None,
    index: Annotated[Path | None, typer.Option(help="An M3Index directory to serve /search from")] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told otherwise)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, … (default cpu)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads for the model (default: all cores)")] = None,
    precision: Annotated[
        str | None, typer.Option(help="Fast CPU path of M3Model.optimize: fp32, bf16 or int8 (default: plain forward)")
    ] = None,
    max_length: Annotated[int, typer.Option(help="Default truncation length in tokens")] = 512,
    max_batch_tokens: Annotated[int, typer.Option(help="Padded tokens per forward pass")] = 8192,
    max_batch_size: Annotated[int, typer.Option(help="Texts per forward pass")] = 256,
    round_batches: Annotated[int, typer.Option(help="A worker round takes up to this many batches of queued work")] = 1,
    max_wait_ms: Annotated[float, typer.Option(help="How long an idle worker waits to fill a batch")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting for the model before 503")] = 256,
    max_texts: Annotated[int, typer.Option(help="Texts (pairs, queries) per request before 413")] = 256,
    max_chars: Annotated[int, typer.Option(help="Characters per text before 413")] = 100_000,
    max_request_bytes: Annotated[int, typer.Option(help="Request body bytes before 413")] = 8 * 1024 * 1024,
    timeout: Annotated[float, typer.Option(help="Seconds a request may wait for its result before 504")] = 60.0,
    max_k: Annotated[int, typer.Option(help="Largest k of /search")] = 1000,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File of API keys, one per line: every endpoint but /health and /ready needs "
                                       "'Authorization: Bearer <key>'")
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow browser requests from this origin (repeat; default: CORS off)")
    ] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="One log line per request")] = True,
    graceful_timeout: Annotated[
        float, typer.Option(help="Seconds SIGTERM waits for in-flight requests before closing them")
    ] = 30.0,
) -> None:
    """Serve embeddings, scores and search over HTTP (OpenAI-compatible /v1/embeddings)."""
    missing = _missing_deps()
    if missing:
        error(f"m3embed serve needs {', '.join(missing)}: pip install 'm3embed\\[serve]'")  # escaped: not rich markup
        raise typer.Exit(2)
    from ..serve.config import ServeConfig, read_api_keys

    keys: tuple[str, ...] = ()
    if api_key_file is not None:
        try:
            keys = read_api_keys(str(api_key_file))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            error(e)
            raise typer.Exit(2) from None
    name = model or os.environ.get(MODEL_ENV) or "m3embed-small"
    try:
        config = ServeConfig(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                             round_batches=round_batches, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             max_texts_per_request=max_texts, max_chars_per_text=max_chars,
                             max_request_bytes=max_request_bytes, request_timeout_s=timeout, max_length=max_length,
                             max_k=max_k, model_name=name, api_keys=keys, cors_origins=tuple(cors_origin or ()))
    except ValueError as e:
        error(e)
        raise typer.Exit(2) from None
    if not _is_loopback(host) and not keys:
        console.print(f"[yellow]warning:[/yellow] binding {host} without --api-key-file: anyone who can reach "
                      "this port can use the server", highlight=False)

    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    m = load_model(model, device, False)
    if precision is not None:
        try:
            m.optimize(precision)  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as e:
            error(e)
            raise typer.Exit(2) from None
    idx = None
    if index is not None:
        from ..index import IndexCorruptError, M3Index

        try:
            idx = M3Index.open(index)
        except (OSError, ValueError, IndexCorruptError) as e:
            error(e)
            raise typer.Exit(2) from None
    import uvicorn

    from ..index import ModelMismatchError
    from ..serve import create_app

    try:
        api = create_app(m, idx, config)
    except ModelMismatchError as e:
        error(e)
        raise typer.Exit(2) from None
    logging.getLogger("m3embed.serve").setLevel(logging.INFO)
    logging.getLogger("m3embed.serve.access").setLevel(logging.INFO if access_log else logging.WARNING)
    # uvicorn handles SIGTERM/SIGINT itself (graceful: stop accepting, finish in-flight requests, drain the
    # queue in the lifespan shutdown) and re-raises the signal afterwards: exit 0 then, not "killed"
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    console.print(f"m3embed serve: {name} on http://{host}:{port} (index: {index or 'none'}, "
                  f"auth: {'on' if keys else 'off'}, torch threads {torch.get_num_threads()})", highlight=False)
    uvicorn.run(api, host=host, port=port, log_config=None, access_log=False, server_header=False,
                timeout_graceful_shutdown=graceful_timeout)
