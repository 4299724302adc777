"""Command line: ``m3embed encode | random-checkpoint`` (one module per command group)."""

from . import encode as _encode  # noqa: F401  (registers its commands)
from .app import app

__all__ = ["app"]
