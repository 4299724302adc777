"""Named models and the readers that assemble them from packaged weights (see ``registry``)."""

from .registry import DEFAULT_MODEL, MODELS, ModelUnavailable, assemble_base, ensure_small, make_delta

__all__ = ["DEFAULT_MODEL", "MODELS", "ModelUnavailable", "assemble_base", "ensure_small", "make_delta"]
