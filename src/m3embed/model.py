"""M3Model: an encoder backbone plus the sparse and ColBERT heads.

The three representations are defined here once, over padded batches, and reused by inference
(`encode`), pair scoring and training:

* dense   — the [CLS] hidden state (or the mean of the MCLS [CLS] states), L2-normalised;
* sparse  — ``ReLU(h_i · w + b)`` per token;
* ColBERT — ``normalize(colbert_linear(h_i))`` for every real token but the leading [CLS].
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from . import checkpoint as ckpt
from .scoring import PAPER_WEIGHTS
from .tokenize import M3Tokenizer

if TYPE_CHECKING:
    from .accel import Precision
    from .output import M3Output

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _as_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(_DTYPES)}") from None


class M3Model(nn.Module):
    """XLM-R (any HF encoder) + ``colbert_linear`` (H → D) + ``sparse_linear`` (H → 1)."""

    def __init__(self, backbone: PreTrainedModel, tokenizer: M3Tokenizer, *, colbert_dim: int = -1) -> None:
        super().__init__()
        ckpt.check_encoder_config(backbone.config)
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.colbert_linear = nn.Linear(hidden, hidden if colbert_dim <= 0 else colbert_dim)
        self.sparse_linear = nn.Linear(hidden, 1)
        #: (w_dense, w_sparse, w_colbert) of the ``all`` search mode for this model: the paper's unless the
        #: checkpoint's ``m3embed.json`` says otherwise (fitted to the model's score scales on dev data)
        self.hybrid_weights: tuple[float, float, float] = PAPER_WEIGHTS
        self.to(dtype=next(backbone.parameters()).dtype)
        self.eval()

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        fresh_heads: bool = False,
        colbert_dim: int = -1,
        attn_implementation: str = "sdpa",
        precision: Precision | None = None,
    ) -> M3Model:
        """Load a checkpoint in the BAAI/bge-m3 layout (local directory or hub id).

        ``device`` defaults to CPU; ``dtype`` defaults to float32 (use fp16/bf16 on GPU).
        Missing or mis-shaped head files raise ``CheckpointError`` unless ``fresh_heads=True``,
        which starts both heads from a random initialisation (``colbert_dim`` sets its width).
        ``precision`` ("fp32" | "bf16" | "int8") attaches a fast CPU inference path, see
        :meth:`optimize`; None (default) keeps the plain transformers forward.
        """
        path = ckpt.resolve(path_or_id)
        config = ckpt.load_config(path)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        torch_dtype = _as_dtype(dtype, dev)
        hidden = config.hidden_size
        heads: dict[str, dict[str, torch.Tensor]] = {}
        if not fresh_heads:
            heads["colbert"] = ckpt.load_head(path, ckpt.COLBERT_FILE, hidden, None)
            heads["sparse"] = ckpt.load_head(path, ckpt.SPARSE_FILE, hidden, 1)
            colbert_dim = heads["colbert"]["weight"].shape[0]
        tokenizer = M3Tokenizer.from_dir(path)
        backbone = _load_backbone(path, config, torch_dtype, attn_implementation)
        if tokenizer.vocab_size > backbone.config.vocab_size:
            raise ckpt.CheckpointError(
                f"{path}: tokenizer has {tokenizer.vocab_size} ids but the encoder's vocab_size is "
                f"{backbone.config.vocab_size}"
            )
        model = cls(backbone, tokenizer, colbert_dim=colbert_dim)
        if heads:
            model.colbert_linear.load_state_dict(heads["colbert"])
            model.sparse_linear.load_state_dict(heads["sparse"])
        model.source = str(path_or_id)
        model.hybrid_weights = ckpt.load_hybrid_weights(path)
        model = model.to(device=dev, dtype=torch_dtype)
        return model if precision is None else model.optimize(precision)

    def save_pretrained(self, directory: str | os.PathLike[str], *, safe_serialization: bool = True) -> None:
        """Write the bge-m3 layout: encoder + config, tokenizer, ``colbert_linear.pt``, ``sparse_linear.pt``
        (and ``m3embed.json`` when :attr:`hybrid_weights` are not the paper's).

        The encoder goes to ``model.safetensors``, or to ``pytorch_model.bin`` (as BAAI/bge-m3)
        with ``safe_serialization=False``.

        Files are written into a temporary sibling directory first and moved in one by one, so a
        failure never leaves a half-written file under ``directory``.
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp"))
        try:
            if safe_serialization:
                self.backbone.save_pretrained(tmp)
            else:  # transformers 5 always writes safetensors; bge-m3 itself ships pytorch_model.bin
                self.backbone.config.save_pretrained(tmp)
                state = {k: v.detach().to("cpu").contiguous() for k, v in self.backbone.state_dict().items()}
                torch.save(state, tmp / "pytorch_model.bin")
            self.tokenizer.save(tmp)
            ckpt.save_head(self.colbert_linear, tmp / ckpt.COLBERT_FILE)
            ckpt.save_head(self.sparse_linear, tmp / ckpt.SPARSE_FILE)
            if tuple(self.hybrid_weights) != PAPER_WEIGHTS:
                ckpt.save_hybrid_weights(tmp, tuple(self.hybrid_weights))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            # a stale weights file of the other format would shadow or duplicate the new one
            for stale in ("pytorch_model.bin", "model.safetensors", ckpt.SETTINGS_FILE):
                if (target / stale).exists() and not (tmp / stale).exists():
                    (target / stale).unlink()
            for f in tmp.iterdir():
                os.replace(f, target / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> PretrainedConfig:
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.colbert_linear.weight.dtype

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def colbert_dim(self) -> int:
        return int(self.colbert_linear.out_features)

    @property
    def max_positions(self) -> int:
        """Longest input (tokens incl. specials) the position table allows: 8192 for bge-m3."""
        n = int(self.config.max_position_embeddings)
        if self.config.model_type in {"xlm-roberta", "roberta", "camembert", "xlm-roberta-xl"}:
            n -= int(self.config.pad_token_id) + 1  # RoBERTa positions start at pad_id + 1
        return n

    # ------------------------------------------------------------------ the three representations
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``[B, L, H]`` of the backbone for right-padded ``input_ids``."""
        fast = self.__dict__.get("_accel")  # set by optimize(): CPU inference only
        if fast is not None and not torch.is_grad_enabled() and input_ids.device.type == "cpu":
            return fast(input_ids, attention_mask)
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        return h if h.dtype == self.dtype else h.to(self.dtype)  # bf16 backbone (optimize) → fp32 heads

    def optimize(self, precision: Precision = "fp32") -> M3Model:
        """Attach a fast CPU inference path (in place; returns ``self``): see :mod:`m3embed.accel`.

        "fp32": fused oneDNN kernels, same math (≤ ~1e-5 off the plain forward); "bf16": bfloat16
        encoder (fast only on CPUs with native bf16); "int8": dynamic int8 encoder matmuls
        (dense cosine vs fp32 ≥ 0.999). Used with autograd off on CPU; training is unaffected.
        """
        from .accel import optimize

        return optimize(self, precision)

    @staticmethod
    def dense_from_hidden(hidden: torch.Tensor, cls_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit dense vectors ``[B, H]``: the [CLS] state, or the mean over ``cls_mask`` positions (MCLS)."""
        if cls_mask is None:
            x = hidden[:, 0]
        else:
            w = cls_mask.to(hidden.dtype).unsqueeze(-1)
            x = (hidden * w).sum(1) / w.sum(1).clamp_min(1)
        return F.normalize(x, dim=-1)

    def sparse_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Token weights ``[..., L]`` = ``ReLU(sparse_linear(h))``; special tokens are not yet removed."""
        return torch.relu(self.sparse_linear(hidden)).squeeze(-1)

    def colbert_from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ColBERT vectors ``[B, L-1, D]`` for positions 1…L-1; padded rows are exactly zero."""
        vecs = self.colbert_linear(hidden[:, 1:]) * attention_mask[:, 1:, None].to(hidden.dtype)
        return F.normalize(vecs, dim=-1)

    def colbert_rows(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """ColBERT vectors of already-gathered token states ``[T, H]`` → ``[T, D]``."""
        return F.normalize(self.colbert_linear(hidden_rows), dim=-1)

    # ------------------------------------------------------------------ inference API
    def encode(self, texts: str | Sequence[str], **kwargs: Any) -> M3Output:
        """Encode texts; see :func:`m3embed.encode.encode` for the arguments."""
        from .encode import encode

        return encode(self, texts, **kwargs)

    def encode_queries(self, texts: str | Sequence[str], *, max_length: int = 512, **kwargs: Any) -> M3Output:
        """``encode`` with the query length default (512, the reference's ``query_max_length``)."""
        return self.encode(texts, max_length=max_length, **kwargs)

    def encode_corpus(self, texts: str | Sequence[str], *, max_length: int = 512, **kwargs: Any) -> M3Output:
        """``encode`` with the passage length default (512, the reference's ``passage_max_length``)."""
        return self.encode(texts, max_length=max_length, **kwargs)

    def compute_score(self, pairs: Any, **kwargs: Any) -> dict[str, Any]:
        """Score (query, passage) pairs with every mode; see :func:`m3embed.scoring.compute_score`."""
        from .scoring import compute_score

        return compute_score(self, pairs, **kwargs)

    def convert_id_to_token(self, lexical_weights: Any) -> Any:
        """Turn ``{token id: weight}`` (or a list of them) into ``{token text: weight}``."""
        from .scoring import convert_id_to_token

        return convert_id_to_token(self.tokenizer, lexical_weights)


def _load_backbone(path: Path, config: PretrainedConfig, dtype: torch.dtype, attn: str) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"config": config, "attn_implementation": attn}
    # transformers >= 4.56 calls it `dtype`; older releases only know `torch_dtype`
    import transformers

    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    kwargs["dtype" if major_minor >= (4, 56) else "torch_dtype"] = dtype
    from transformers.utils import logging as hf_logging

    # transformers 5 draws a per-tensor "Loading weights" bar; keep the caller's setting otherwise
    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ckpt.CheckpointError(f"{path}: cannot load encoder weights ({e})") from e
    finally:
        if not bars_were_off:
            hf_logging.enable_progress_bar()
