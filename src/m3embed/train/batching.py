"""Split-batch encoding: a large batch encoded in sub-batches, each under activation checkpointing,
its representations concatenated before the loss (paper §3.4, "efficient batching").

Each sub-batch runs the whole encoder plus heads inside ``torch.utils.checkpoint``: only its inputs
and outputs stay alive, and its activations are rebuilt during backward, one sub-batch at a time, so
the activation memory of a step is that of one sub-batch however large the batch. Texts are sorted
by length before splitting and every sub-batch is trimmed to its own longest text; outputs are
padded back to the batch's length (zero weights / zero ColBERT rows, as the padding of a full batch),
so the unified loss sees exactly the tensors a one-piece forward would give.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .losses import Reps

if TYPE_CHECKING:
    from ..model import M3Model

#: (min padded length, sub-batch size) — the reference's choice by padded length (``R:modeling.py``).
AUTO_SUB_BATCH = ((6000, 1), (5000, 2), (4000, 3), (3000, 3), (2000, 5), (1000, 9), (512, 16), (0, 32))


def auto_sub_batch_size(length: int) -> int:
    """Sub-batch size for texts padded to ``length`` tokens (the reference's table)."""
    return next(n for lo, n in AUTO_SUB_BATCH if length >= lo)


def plan_sub_batches(lengths: Sequence[int], sub_batch_size: int | str | None) -> list[list[int]]:
    """Row indices of each sub-batch: longest first; ``"auto"`` sizes each from its longest text."""
    n = len(lengths)
    if sub_batch_size is None:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: -lengths[i])
    out, start = [], 0
    while start < n:
        size = auto_sub_batch_size(lengths[order[start]]) if sub_batch_size == "auto" else int(sub_batch_size)
        out.append(order[start : start + size])
        start += size
    return out


def enable_layer_checkpointing(model: M3Model) -> None:
    """HF layer-wise activation checkpointing of the encoder (non-reentrant; works with frozen inputs)."""
    kwargs = {"use_reentrant": False}
    on = getattr(model.backbone, "activation_checkpointing_enable", None)  # transformers >= 5
    if on is not None:
        on(activation_checkpointing_kwargs=kwargs)
    else:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _special_mask(model: M3Model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positions whose sparse weight counts: real tokens other than cls / eos / pad / unk."""
    unused = torch.tensor(sorted(model.tokenizer.special.unused), device=ids.device)
    return mask.bool() & ~torch.isin(ids, unused)


def _heads(model: M3Model, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, unified: bool):
    dense = model.dense_from_hidden(hidden)
    if not unified:
        return (dense,)
    sparse = model.sparse_from_hidden(hidden) * _special_mask(model, ids, mask).to(hidden.dtype)
    colbert = model.colbert_from_hidden(hidden, mask)
    return dense, sparse, colbert


def _forward(model: M3Model, ids: torch.Tensor, mask: torch.Tensor, unified: bool, frozen_encoder: bool):
    if frozen_encoder:
        with torch.no_grad():
            hidden = model.hidden_states(ids, mask)
    else:
        hidden = model.hidden_states(ids, mask)
    return _heads(model, hidden, ids, mask, unified)


def encode_reps(
    model: M3Model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    unified: bool = True,
    sub_batch_size: int | str | None = None,
    checkpoint_sub_batches: bool = True,
    frozen_encoder: bool = False,
) -> Reps:
    """Dense (and, when ``unified``, sparse and ColBERT) representations of a padded batch.

    ``sub_batch_size`` (int, ``"auto"`` or None) turns on split-batch; each sub-batch is then
    checkpointed unless ``checkpoint_sub_batches=False`` or the encoder is frozen (no encoder
    activations are kept for backward then anyway).
    """
    lengths = mask.sum(1).tolist()
    chunks = plan_sub_batches(lengths, sub_batch_size)
    if len(chunks) == 1 and sub_batch_size is None:
        out = _forward(model, ids, mask, unified, frozen_encoder)
        return _reps(ids, mask, out, unified)
    use_ckpt = checkpoint_sub_batches and not frozen_encoder and torch.is_grad_enabled()
    full_len = ids.shape[1]
    pieces = []
    for rows in chunks:
        idx = torch.tensor(rows, device=ids.device)
        lc = max(lengths[i] for i in rows)
        sub_ids, sub_mask = ids[idx, :lc], mask[idx, :lc]
        if use_ckpt:
            out = checkpoint(_forward, model, sub_ids, sub_mask, unified, frozen_encoder, use_reentrant=False)
        else:
            out = _forward(model, sub_ids, sub_mask, unified, frozen_encoder)
        if unified:  # back to the batch's padded length: zero weights, zero ColBERT rows
            dense, sparse, colbert = out
            sparse = F.pad(sparse, (0, full_len - lc))
            colbert = F.pad(colbert, (0, 0, 0, full_len - lc))
            out = (dense, sparse, colbert)
        pieces.append(out)
    order = torch.tensor([i for rows in chunks for i in rows], device=ids.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=ids.device)
    merged = tuple(torch.cat([p[k] for p in pieces], 0)[inverse] for k in range(len(pieces[0])))
    return _reps(ids, mask, merged, unified)


def _reps(ids: torch.Tensor, mask: torch.Tensor, out: tuple, unified: bool) -> Reps:
    if unified:
        return Reps(ids=ids, mask=mask, dense=out[0], sparse=out[1], colbert=out[2])
    return Reps(ids=ids, mask=mask, dense=out[0])
