"""``m3embed encode --engine ray``: sharded, resumable encoding on a Ray cluster (called by :mod:`.encode`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .app import DEFAULT_MODEL, MODEL_ENV, console, error


def encode_with_ray(input: Path, output: Path, *, model: str | None, address: str | None, workers: int | None,
                    threads_per_worker: int | None, part_rows: int, overwrite: bool, max_length: int,
                    batch_size: int, device: str | None, fp16: bool, dense: bool, sparse: bool, colbert: bool,
                    mcls: bool, truncate: bool, field: str) -> None:
    """Encode the shards under ``input`` into the directory ``output`` (parquet parts + manifest.json)."""
    from ..distributed.ray_encode import RayConnectError, encode_shards
    from ..distributed.shards import EncodedCorruptError
    from ..index.storage import IndexLockedError

    if output.suffix in (".npz", ".jsonl") or output.is_file():
        raise typer.BadParameter(f"{output}: with --engine ray the output is a directory (one parquet file per part "
                                 "and a manifest.json)", param_hint="OUTPUT")
    if fp16 and not (device or "").startswith("cuda"):
        raise typer.BadParameter("--fp16 needs --device cuda (fp16 on these CPUs is slow and lossy)",
                                 param_hint="--fp16")
    name = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    gpus = 1.0 if (device or "").startswith("cuda") else 0.0
    try:
        res = encode_shards(str(input), output, name, dense=dense, sparse=sparse, colbert=colbert,
                            max_length=max_length, batch_size=batch_size, mcls=mcls, truncation=truncate,
                            records="field", field=field, part_rows=part_rows, address=address, workers=workers,
                            threads_per_worker=threads_per_worker, gpus_per_worker=gpus,
                            device="cuda" if gpus else "cpu", dtype="fp16" if fp16 else None, overwrite=overwrite,
                            show_progress=True)
    except (ValueError, FileNotFoundError, UnicodeDecodeError, ImportError, RayConnectError, IndexLockedError,
            EncodedCorruptError, RuntimeError) as e:
        error(e)
        raise typer.Exit(2) from None
    done = f"{res.parts_skipped} of {res.parts_total} parts were already done; " if res.parts_skipped else ""
    rate = (f" in {res.encode_s:.1f} s ({res.tokens_per_s:,.0f} tokens/s, {res.rows_per_s:,.1f} rows/s; "
            f"{res.workers} workers × {res.threads_per_worker} threads, startup {res.startup_s:.1f} s)"
            if res.parts_encoded else "")
    console.print(f"{done}encoded {res.rows_encoded:,} texts in {res.parts_encoded} parts "
                  f"({res.tokens_encoded:,} tokens){rate} → {output}", soft_wrap=True)
