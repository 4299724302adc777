"""Training configuration: one dataclass, loadable from YAML, with ``key=value`` overrides.

Defaults follow the reference fine-tuning recipe (FlagEmbedding 1.4.2 M3 with ``unified_finetuning``
and ``use_self_distill`` on): temperature 0.02, group size 8, ensemble weights (1, 0.3, 1), sparse
loss weight 0.1, ``(L + L')/2``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

STAGES = ("dense", "unified", "fix_encoder")
WEIGHTINGS = ("reference", "sum")
KD_TYPES = ("kl_div", "m3_kd_loss")
PRECISIONS = ("no", "bf16", "fp16", "auto")
HEADS = ("dense", "sparse", "colbert")


class ConfigError(ValueError):
    """An invalid training configuration, naming the key (and file) at fault."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Lengths count tokens incl. special tokens."""

    # ---- model
    model: str = ""  #: checkpoint directory (bge-m3 layout or a plain HF encoder) or hub id
    fresh_heads: bool = False  #: start sparse/ColBERT heads from random init (plain encoders)
    colbert_dim: int = -1  #: ColBERT width for fresh heads (-1: hidden size)
    stage: str = "unified"  #: dense | unified | fix_encoder
    fix_position_embedding: bool = False  #: freeze position embeddings (long-context fine-tuning)
    freeze: list[str] = field(default_factory=list)  #: fnmatch patterns of parameter names kept fixed
    attn_implementation: str = "sdpa"

    # ---- data
    train_data: list[str] = field(default_factory=list)  #: jsonl / jsonl.gz files; one file = one dataset
    group_size: int = 8  #: 1 positive + (group_size - 1) negatives per query
    query_max_len: int = 32
    passage_max_len: int = 128
    query_instruction: str | None = None  #: prefix for every query (a row's "prompt" field overrides it)
    query_instruction_format: str = "{}{}"
    batch_size: int = 4  #: queries per device per micro-batch (when length buckets are off)
    length_buckets: bool = False  #: group by length into the paper's buckets with a batch size per bucket
    bucket_batch_sizes: list[int] | None = None  #: per-device sizes for the 9 buckets (default: paper table)
    memory_budget_gib: float | None = None  #: scale the paper's table to this per-device memory
    batch_scale: float | None = None  #: explicit scale of the paper's table (overrides memory_budget_gib)
    max_bucket_batch_size: int | None = None  #: cap on any bucket's batch size
    drop_last: bool = True  #: drop the incomplete last batch of each (dataset, bucket)
    shuffle_ratio: float = 0.0  #: probability of the positive's chunk shuffle (paper: 0.002)
    use_teacher_scores: bool = False  #: distil pos_scores / neg_scores from the data
    seed: int = 42

    # ---- losses
    temperature: float = 0.02
    ensemble_weights: list[float] = field(default_factory=lambda: [1.0, 0.3, 1.0])  #: dense, sparse, colbert
    head_loss_weights: list[float] = field(default_factory=lambda: [1.0, 0.1, 1.0])  #: λ dense, sparse, colbert
    loss_weighting: str = "reference"  #: reference: (L + L')/2 with /4 and /3; sum: paper v1's L + L'
    self_distill: bool = True
    self_distill_start_step: int = -1  #: SKD on once the optimizer step index exceeds this
    kd_loss_type: str = "kl_div"  #: kl_div | m3_kd_loss (teacher scores from the data)
    in_batch_negatives: bool = True  #: False: each query only sees its own group
    colbert_padding: str = "exact"  #: exact (mask padding) | clamp (reference: padded rows score 0)

    # ---- batching
    sub_batch_size: int | str | None = None  #: split-batch: an int, "auto" (reference table) or None (off)
    gradient_checkpointing: bool = False  #: layer-wise checkpointing of the encoder
    negatives_cross_device: bool = False  #: all-gather representations across ranks
    cross_device_heads: list[str] = field(default_factory=lambda: ["dense"])  #: heads gathered when on

    # ---- optimisation
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  #: overrides warmup_ratio
    max_steps: int | None = None  #: optimizer steps; default: num_epochs over the data
    num_epochs: float = 1.0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"  #: no | bf16 | fp16 | auto (bf16 on GPUs that support it, fp16 else; no on CPU)
    device: str | None = None  #: cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available, else cpu)

    # ---- periodic evaluation (the eval harness, at every checkpoint)
    eval_data: str | None = None  #: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); held out!
    eval_split: str = "test"
    eval_modes: list[str] = field(default_factory=lambda: ["dense", "sparse", "multivec", "all"])
    eval_at_start: bool = True  #: also evaluate the model before the first step (the untrained heads)

    # ---- output
    output_dir: str = ""
    save_steps: int | None = None  #: checkpoint every N optimizer steps (and at the end)
    save_total_limit: int | None = None  #: keep only the newest N checkpoints
    resume_from: str | None = None  #: a checkpoint-N directory, or "latest" (newest under output_dir)
    logging_steps: int = 1
    progress: bool = True
    plot: bool = True
    safe_serialization: bool = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping; unknown keys and wrong types raise ``ConfigError`` naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of option: value, got {type(data).__name__}")
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                close = [n for n in names if n.startswith(str(key)[:4])]
                hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
                raise ConfigError(f"{source}: unknown option {key!r}{hint}")
            kwargs[key] = _coerce(value, hints[key], f"{source}: {key}")
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Read ``path`` (YAML mapping) and apply ``overrides`` on top."""
        data: dict[str, Any] = {}
        source = "overrides"
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"{path}: no such config file")
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML ({e})") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
            data.update(loaded or {})
            source = str(path)
        data.update(overrides or {})
        return cls.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------ validation
    def validate(self, source: str = "config") -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: {key}: {why}")

        for key, allowed in (("stage", STAGES), ("loss_weighting", WEIGHTINGS), ("kd_loss_type", KD_TYPES),
                             ("mixed_precision", PRECISIONS), ("colbert_padding", ("exact", "clamp"))):
            if getattr(self, key) not in allowed:
                raise bad(key, f"{getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("group_size", "query_max_len", "passage_max_len", "batch_size", "grad_accum", "logging_steps"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("query_max_len", "passage_max_len"):
            if getattr(self, key) < 2:
                raise bad(key, "must be >= 2 (room for the [CLS] and [SEP] tokens)")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise bad("temperature", f"must be a positive number, got {self.temperature}")
        for key in ("ensemble_weights", "head_loss_weights"):
            if len(getattr(self, key)) != 3:
                raise bad(key, f"needs 3 numbers [dense, sparse, colbert], got {getattr(self, key)}")
        if len(self.adam_betas) != 2:
            raise bad("adam_betas", f"needs 2 numbers, got {self.adam_betas}")
        if isinstance(self.sub_batch_size, str) and self.sub_batch_size != "auto":
            raise bad("sub_batch_size", f"expected an integer, 'auto' or null, got {self.sub_batch_size!r}")
        if isinstance(self.sub_batch_size, int) and self.sub_batch_size < 1:
            raise bad("sub_batch_size", f"must be >= 1, got {self.sub_batch_size}")
        for h in self.cross_device_heads:
            if h not in HEADS:
                raise bad("cross_device_heads", f"{h!r} is not one of {', '.join(HEADS)}")
        if self.bucket_batch_sizes is not None and (len(self.bucket_batch_sizes) != 9
                                                    or min(self.bucket_batch_sizes) < 1):
            raise bad("bucket_batch_sizes", "needs 9 positive integers, one per length bucket")
        if not 0 <= self.shuffle_ratio <= 1:
            raise bad("shuffle_ratio", f"must be in [0, 1], got {self.shuffle_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", f"must be >= 1, got {self.max_steps}")
        if self.num_epochs <= 0:
            raise bad("num_epochs", f"must be > 0, got {self.num_epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.save_steps is not None and self.save_steps < 1:
            raise bad("save_steps", f"must be >= 1, got {self.save_steps}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise bad("save_total_limit", f"must be >= 1, got {self.save_total_limit}")
        try:
            probe = self.query_instruction_format.format("\x00instr", "\x01query")
        except (IndexError, KeyError, ValueError) as e:
            raise bad("query_instruction_format", f"must have two {{}} slots (instruction, query): {e}") from None
        if "\x01query" not in probe:
            raise bad("query_instruction_format", f"{self.query_instruction_format!r} drops the query: it needs two "
                      "{} slots (instruction, query)")

    @property
    def trains_heads(self) -> bool:
        """Whether the sparse and ColBERT heads take part (stages unified and fix_encoder)."""
        return self.stage != "dense"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field's type hint; ints are accepted for floats."""
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: may not be null")
    if origin is not None and type(None) in args:  # Optional[X] / X | Y | None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if origin is list:
        if isinstance(value, str | int | float):
            value = [value]  # a single file / head given without list brackets
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], where) for v in value]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {args}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def parse_override(item: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)`` with the value parsed as YAML (``3``, ``true``, ``[a, b]``, ``null``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value
