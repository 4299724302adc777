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

__all__ = [
    "CheckpointError",
    "ColbertVectors",
    "LexicalWeights",
    "M3Model",
    "M3Output",
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
