"""Distributed corpus encoding: shard plans and per-part outputs (:mod:`.shards`), Ray driver and
workers (:mod:`.ray_encode`).

Ray is imported only when a Ray function runs; without it they raise ``ImportError`` naming the
extra (``pip install 'm3embed[ray]'``). Reading encoded outputs back (:func:`ingest_encoded`,
:func:`read_encoded`) needs only pyarrow.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "encode_shards": "m3embed.distributed.ray_encode",
    "EncodePool": "m3embed.distributed.ray_encode",
    "build_index": "m3embed.distributed.ray_encode",
    "RayEncodeResult": "m3embed.distributed.ray_encode",
    "RayConnectError": "m3embed.distributed.ray_encode",
    "ingest_encoded": "m3embed.distributed.shards",
    "read_encoded": "m3embed.distributed.shards",
    "EncodedCorruptError": "m3embed.distributed.shards",
}


def __getattr__(name: str) -> Any:
    # keep `import m3embed.distributed` free of pyarrow / ray until something is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'm3embed.distributed' has no attribute {name!r}")


__all__ = sorted(_LAZY)
