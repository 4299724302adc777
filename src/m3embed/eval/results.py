"""Containers for one evaluation: a result per system (BM25 or a search mode) and the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field

from .metrics import MetricResult

#: search mode → row label of the paper's table
MODE_LABELS = {
    "bm25": "BM25",
    "dense": "Dense",
    "sparse": "Sparse",
    "multivec": "Multi-vec",
    "dense+sparse": "Dense+Sparse",
    "all": "All",
    "rrf": "RRF",
}
#: the index's search modes, in table order
MODEL_MODES = ("dense", "sparse", "multivec", "dense+sparse", "all", "rrf")


@dataclass
class SystemResult:
    """Metrics of one system (``key`` = ``"bm25"`` or a search mode) and its search time in seconds."""

    key: str
    metrics: MetricResult
    search_seconds: float
    hits: int  # documents returned over all queries

    @property
    def label(self) -> str:
        return MODE_LABELS.get(self.key, self.key)

    def to_dict(self, *, per_query: bool = True) -> dict:
        return {"key": self.key, "label": self.label, "search_seconds": self.search_seconds, "hits": self.hits,
                **self.metrics.to_dict(per_query=per_query)}


@dataclass
class EvalResults:
    """Everything one ``evaluate`` call measured; :meth:`to_dict` is what the JSON report holds."""

    dataset: dict  # name, path, split, counts, languages
    model: dict | None  # source, sizes; None for a BM25-only run
    config: dict  # k, modes, lengths, batch size, mcls, weights, BM25 parameters
    systems: list[SystemResult]
    metrics: list[str]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    environment: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # report kind → path

    @property
    def languages(self) -> list[str]:
        return list(self.dataset.get("languages") or [])

    def system(self, key: str) -> SystemResult:
        for s in self.systems:
            if s.key == key:
                return s
        raise KeyError(f"no system {key!r} in these results (have {[s.key for s in self.systems]})")

    def to_dict(self, *, per_query: bool = True) -> dict:
        return {
            "dataset": self.dataset, "model": self.model, "config": self.config, "metrics": self.metrics,
            "timings": self.timings, "environment": self.environment, "files": self.files,
            "systems": [s.to_dict(per_query=per_query) for s in self.systems],
        }
