"""``m3embed serve``: an HTTP API (FastAPI + uvicorn) with dynamic batching over one model.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus_client). See ``docs/serve.md``.
"""

from .app import create_app
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
