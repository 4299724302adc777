"""Command line: ``m3embed encode | train | random-checkpoint`` (one module per command group)."""

from . import encode as _encode  # noqa: F401  (registers its commands)
from . import train as _train  # noqa: F401
from .app import app

__all__ = ["app"]
