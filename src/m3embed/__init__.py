"""m3embed — BGE M3-Embedding: dense, lexical and multi-vector retrieval from one encoder."""

from .checkpoint import CheckpointError
from .model import M3Model
from .output import ColbertVectors, LexicalWeights, M3Output
from .scoring import (
    colbert_score,
    compute_score,
    dense_scores,
    lexical_matching_score,
    lexical_scores,
    maxsim,
    minmax_normalize,
    reciprocal_rank_fusion,
    weighted_sum,
    zscore_normalize,
)

__version__ = "0.1.0"

_LAZY = {
    "M3Trainer": "m3embed.train",
    "TrainConfig": "m3embed.train",
    "M3Index": "m3embed.index",
    "SearchHit": "m3embed.index",
    "IndexCorruptError": "m3embed.index",
    "IndexLockedError": "m3embed.index",
    "ModelMismatchError": "m3embed.index",
}


def __getattr__(name: str) -> object:
    # training and the index pull in yaml, faiss and the data pipeline: import them only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'm3embed' has no attribute {name!r}")

__all__ = [
    "CheckpointError",
    "ColbertVectors",
    "IndexCorruptError",
    "IndexLockedError",
    "LexicalWeights",
    "M3Index",
    "M3Model",
    "M3Output",
    "M3Trainer",
    "ModelMismatchError",
    "SearchHit",
    "TrainConfig",
    "colbert_score",
    "compute_score",
    "dense_scores",
    "lexical_matching_score",
    "lexical_scores",
    "maxsim",
    "minmax_normalize",
    "reciprocal_rank_fusion",
    "weighted_sum",
    "zscore_normalize",
]
