"""M3Index: dense (faiss), sparse (inverted index) and multi-vector (memory-mapped) retrieval.

See :mod:`m3embed.index.core` for the API and :mod:`m3embed.index.search` for the modes.
"""

from .core import M3Index, ModelMismatchError, SearchHit, model_fingerprint
from .search import MODES
from .storage import IndexCorruptError, IndexLockedError

__all__ = ["MODES", "IndexCorruptError", "IndexLockedError", "M3Index", "ModelMismatchError", "SearchHit",
           "model_fingerprint"]
