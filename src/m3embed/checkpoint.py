"""Read and write the BAAI/bge-m3 checkpoint layout.

A checkpoint directory holds the encoder (``config.json`` + ``pytorch_model.bin`` or
``model.safetensors``), the tokenizer (``tokenizer.json``, …) and the two heads as pickled
state dicts ``colbert_linear.pt`` (Linear H → D) and ``sparse_linear.pt`` (Linear H → 1).
m3embed adds one optional file, ``m3embed.json``: ``{"hybrid_weights": [w_dense, w_sparse,
w_colbert]}``, the model's own fusion weights for the ``all`` search mode (absent: the paper's).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"
SETTINGS_FILE = "m3embed.json"
# Files the encoder, tokenizer and heads need; the hub repo also ships onnx/ (~2.2 GB) we skip.
HUB_PATTERNS = ["*.json", "*.safetensors", "pytorch_model.bin", "*.pt", "sentencepiece.bpe.model"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as an M3 model, with the reason."""


def resolve(path_or_id: str | os.PathLike[str]) -> Path:
    """A local directory for ``path_or_id``: the directory itself, a named model, or a hub snapshot.

    Named models (``"m3embed-small"``, see ``m3embed.models.registry``) are assembled into a local
    cache on first use. Hub ids (``"BAAI/bge-m3"``) need ``huggingface_hub`` and network access (or its cache).
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_id)
    from .models.registry import resolve_named  # late import: the registry builds on this module

    named = resolve_named(name)
    if named is not None:
        return named
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1)
    if path.exists():
        raise CheckpointError(f"{path}: is a file; a checkpoint is a directory")
    if looks_local or name.count("/") != 1:
        raise CheckpointError(f"{name}: no such checkpoint directory (and not a hub id of the form owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError(f"{name}: not a local directory, and huggingface_hub is not installed") from e
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as e:
        raise CheckpointError(
            f"{name}: not a local directory and the hub download failed ({type(e).__name__}: {e})"
        ) from e


def load_hybrid_weights(path: Path) -> tuple[float, float, float]:
    """The checkpoint's ``m3embed.json`` ``hybrid_weights``, or the paper's (1, 0.3, 1) without that file."""
    from .scoring import PAPER_WEIGHTS, check_hybrid_weights

    file = path / SETTINGS_FILE
    if not file.is_file():
        return PAPER_WEIGHTS
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from e
    if not isinstance(settings, dict) or "hybrid_weights" not in settings:
        raise CheckpointError(f"{file}: expected an object with \"hybrid_weights\"")
    try:
        return check_hybrid_weights(settings["hybrid_weights"], where=f"{file}: hybrid_weights")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def save_hybrid_weights(directory: Path, weights: tuple[float, float, float]) -> None:
    """Write ``m3embed.json`` with ``weights`` into ``directory`` (the caller makes the write atomic)."""
    (directory / SETTINGS_FILE).write_text(json.dumps({"hybrid_weights": list(weights)}) + "\n", encoding="utf-8")


def load_config(path: Path) -> PretrainedConfig:
    """The encoder config; raises ``CheckpointError`` if missing or not an encoder."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json")
    config = AutoConfig.from_pretrained(path)
    check_encoder_config(config, where=str(path / "config.json"))
    return config


def check_encoder_config(config: PretrainedConfig, *, where: str = "config") -> None:
    """Reject configs of decoders and encoder-decoders: M3 needs a bidirectional encoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        raise CheckpointError(f"{where}: model_type {config.model_type!r} is not an encoder-only model")
    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise CheckpointError(
            f"{where}: model_type {config.model_type!r} is not a bidirectional encoder "
            "(expected xlm-roberta, bert, roberta, … — an architecture with a masked-LM head)"
        )


def load_head(path: Path, name: str, in_features: int, out_features: int | None) -> dict[str, torch.Tensor]:
    """Load one head's state dict with ``weights_only=True`` and check its shapes.

    ``out_features=None`` accepts any output size (ColBERT dim is free); returns the tensors.
    """
    file = path / name
    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing head file (pass fresh_heads=True to start from randomly initialised heads)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{file}: not a readable torch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{file}: expected a state dict with 'weight' and 'bias', got {keys}")
    w, b = state["weight"], state["bias"]
    if w.ndim != 2 or w.shape[1] != in_features or (out_features is not None and w.shape[0] != out_features):
        want = f"[{out_features if out_features is not None else 'D'}, {in_features}]"
        raise CheckpointError(f"{file}: weight shape {list(w.shape)} does not match the encoder, expected {want}")
    if b.shape != (w.shape[0],):
        raise CheckpointError(f"{file}: bias shape {list(b.shape)} does not match weight rows {w.shape[0]}")
    return state


def save_head(module: nn.Linear, file: Path) -> None:
    """Write a head as the reference does: a ``{'weight', 'bias'}`` state dict on CPU, atomically."""
    state = {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}
    atomic_torch_save(state, file)


def atomic_torch_save(obj: object, file: Path) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then rename over ``file``."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
