"""Batched inference: tokenise once, sort by length, pad per batch, run the heads, restore order.

Differences from the reference's ``encode`` that matter for speed and robustness: no probe
forward (the reference re-runs its longest batch once per call), batches bounded by a token
budget as well as a count, ColBERT projected only on real tokens, sparse weights reduced per
text without any batch × length × vocab tensor, and out-of-memory handled on every batch (only
OOM errors: other RuntimeErrors surface).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .cpu_alloc import tune_malloc
from .output import ColbertVectors, LexicalWeights, M3Output

if TYPE_CHECKING:
    from .model import M3Model

logger = logging.getLogger(__name__)


def encode(
    model: M3Model,
    texts: str | Sequence[str],
    *,
    batch_size: int = 256,
    max_length: int = 512,
    return_dense: bool = True,
    return_sparse: bool = False,
    return_colbert: bool = False,
    return_colbert_vecs: bool | None = None,
    mcls: bool = False,
    truncation: bool = True,
    max_batch_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> M3Output:
    """Encode ``texts`` into dense ``[N, H]``, lexical weights and/or ColBERT matrices.

    ``batch_size`` caps texts per forward and ``max_batch_tokens`` caps padded tokens per forward
    (default unbounded, or the budget of an ``M3Model.optimize``-d model: 4096); ``max_length``
    counts special tokens and may not exceed the model's position table (8192 for bge-m3).
    ``mcls=True`` inserts a [CLS] every 256 tokens and makes the dense vector the normalised mean
    of their states. ``progress`` is called with the number of texts finished after each batch.
    ``return_colbert_vecs`` is the reference's name for ``return_colbert``.
    """
    if return_colbert_vecs is not None:
        return_colbert = return_colbert_vecs
    single = isinstance(texts, str)
    items = [texts] if single else texts
    if isinstance(items, bytes):
        raise TypeError("texts must be str or a list of str, got bytes (decode it first)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_length > model.max_positions:
        raise ValueError(
            f"max_length={max_length} exceeds the model's position limit of {model.max_positions} tokens"
        )
    ids = model.tokenizer.tokenize(items, max_length=max_length, truncation=truncation, mcls=mcls)
    out = encode_ids(model, ids, batch_size=batch_size, max_batch_tokens=max_batch_tokens, return_dense=return_dense,
                     return_sparse=return_sparse, return_colbert=return_colbert, mcls=mcls, progress=progress)
    out.single = single
    return out


def encode_ids(
    model: M3Model,
    ids: list[list[int]],
    *,
    batch_size: int = 256,
    max_batch_tokens: int | None = None,
    return_dense: bool = True,
    return_sparse: bool = False,
    return_colbert: bool = False,
    mcls: bool = False,
    progress: Callable[[int], None] | None = None,
) -> M3Output:
    """:func:`encode` for texts already tokenised by ``model.tokenizer.tokenize`` (with the same ``mcls``).

    For callers that tokenise once up front (the server sizes its batches by token count);
    ``ids[i]`` must start with [CLS] and end with [SEP]. Arguments as in :func:`encode`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens is None:  # a model optimised by m3embed.accel brings its own token budget
        max_batch_tokens = getattr(model.__dict__.get("_accel"), "max_batch_tokens", None)
    return _encode_ids(model, ids, batch_size=batch_size, max_batch_tokens=max_batch_tokens, dense=return_dense,
                       sparse=return_sparse, colbert=return_colbert, mcls=mcls, progress=progress)


def _plan_batches(lengths: np.ndarray, batch_size: int, max_batch_tokens: int | None) -> list[np.ndarray]:
    """Indices of each batch, longest texts first (stable sort: ties keep input order)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        n = batch_size
        if max_batch_tokens is not None:
            n = max(1, min(n, max_batch_tokens // max(longest, 1)))
        batches.append(order[start : start + n])
        start += n
    return batches


def _encode_ids(
    model: M3Model,
    ids: list[list[int]],
    *,
    batch_size: int,
    max_batch_tokens: int | None,
    dense: bool,
    sparse: bool,
    colbert: bool,
    mcls: bool,
    progress: Callable[[int], None] | None,
) -> M3Output:
    n = len(ids)
    if model.device.type == "cpu":
        tune_malloc()  # reuse large activation blocks instead of page-faulting them in per batch
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
    parts: list[tuple[np.ndarray, _BatchResult]] = []
    sink = _ColbertSink(model, ids, mcls) if colbert else None
    for batch in _plan_batches(lengths, batch_size, max_batch_tokens):
        for sub, res in _run_with_backoff(model, ids, batch, dense, sparse, colbert, mcls):
            if sink is not None:
                sink.put(sub, res)
            parts.append((sub, res))
        if progress is not None:
            progress(len(batch))
    out = _assemble(model, parts, n, lengths, dense, sparse)
    if sink is not None:
        out.colbert = ColbertVectors(sink.data, sink.offsets)
    return out


class _ColbertSink:
    """The output ColBERT matrix, allocated once (sizes are known from the token ids) and filled batch
    by batch, so that peak memory holds one copy of the vectors instead of batches + concat + reorder."""

    def __init__(self, model: M3Model, ids: list[list[int]], mcls: bool) -> None:
        cls = model.tokenizer.special.cls
        # one vector per token after the first; with MCLS the inserted [CLS] tokens get none
        self.counts = np.fromiter((len(x) - 1 - (x[1:].count(cls) if mcls else 0) for x in ids), np.int64,
                                  len(ids))
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.data = np.empty((int(self.offsets[-1]), model.colbert_dim), dtype=np.float32)

    def put(self, rows: np.ndarray, res: _BatchResult) -> None:
        assert res.colbert is not None and res.colbert_counts is not None
        if not np.array_equal(res.colbert_counts, self.counts[rows]):  # an internal invariant, not user input
            raise RuntimeError("ColBERT vector counts differ from the token counts")
        self.data[_ragged_take(self.counts, rows)] = res.colbert
        res.colbert = None  # the batch's copy is no longer needed


class _BatchResult:
    __slots__ = ("colbert", "colbert_counts", "dense", "lex_counts", "lex_ids", "lex_w")

    def __init__(self) -> None:
        self.dense: np.ndarray | None = None
        self.lex_ids: np.ndarray | None = None
        self.lex_w: np.ndarray | None = None
        self.lex_counts: np.ndarray | None = None
        self.colbert: np.ndarray | None = None
        self.colbert_counts: np.ndarray | None = None


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _run_with_backoff(model, ids, batch, dense, sparse, colbert, mcls):
    """Run one batch; on out-of-memory split it in halves and retry each (down to one text)."""
    try:
        return [(batch, _run_batch(model, [ids[i] for i in batch], dense, sparse, colbert, mcls))]
    except Exception as e:
        if not _is_oom(e) or len(batch) == 1:
            raise
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        logger.warning("out of memory on a batch of %d texts; retrying as %d + %d", len(batch), half,
                       len(batch) - half)
        return (_run_with_backoff(model, ids, batch[:half], dense, sparse, colbert, mcls)
                + _run_with_backoff(model, ids, batch[half:], dense, sparse, colbert, mcls))


def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``input_ids`` and ``attention_mask`` ``[B, Lmax]`` (int64)."""
    lmax = max(len(s) for s in seqs)
    arr = np.full((len(seqs), lmax), pad_id, dtype=np.int64)
    for r, s in enumerate(seqs):
        arr[r, : len(s)] = s
    input_ids = torch.from_numpy(arr)
    mask = torch.from_numpy(np.arange(lmax)[None, :] < np.array([len(s) for s in seqs])[:, None]).long()
    return input_ids.to(device), mask.to(device)


@torch.inference_mode()
def _run_batch(model: M3Model, seqs: list[list[int]], dense: bool, sparse: bool, colbert: bool,
               mcls: bool) -> _BatchResult:
    special = model.tokenizer.special
    input_ids, mask = pad_batch(seqs, special.pad, model.device)
    hidden = model.hidden_states(input_ids, mask)
    res = _BatchResult()
    is_cls = (input_ids == special.cls) & mask.bool()
    if dense:
        res.dense = model.dense_from_hidden(hidden, is_cls if mcls else None).float().cpu().numpy()
    if sparse:
        w = model.sparse_from_hidden(hidden).float()
        keep = mask.bool() & (w > 0)
        for tid in special.unused:
            keep &= input_ids != tid
        res.lex_ids, res.lex_w, res.lex_counts = _reduce_lexical(
            keep.cpu().numpy(), input_ids.cpu().numpy(), w.cpu().numpy()
        )
    if colbert:
        keep = mask[:, 1:].bool()
        if mcls:  # the inserted [CLS] tokens are pooling slots, not text: no ColBERT vector
            keep &= input_ids[:, 1:] != special.cls
        rows = model.colbert_rows(hidden[:, 1:][keep])
        res.colbert = rows.float().cpu().numpy()
        res.colbert_counts = keep.sum(1).cpu().numpy()
    return res


def _reduce_lexical(keep: np.ndarray, input_ids: np.ndarray, w: np.ndarray):
    """Per text, merge repeated token ids by max weight, ids in first-occurrence order.

    Returns (ids [nnz], weights [nnz], count per row [B]) for the kept positions of a batch.
    """
    rows, pos = np.nonzero(keep)
    tok = input_ids[rows, pos]
    wt = w[rows, pos]
    if len(rows) == 0:
        return tok.astype(np.int64), wt.astype(np.float32), np.zeros(keep.shape[0], dtype=np.int64)
    # group equal (row, token): within a group entries stay in position order
    o = np.lexsort((pos, tok, rows))
    r_s, t_s, p_s, w_s = rows[o], tok[o], pos[o], wt[o]
    new = np.ones(len(o), dtype=bool)
    new[1:] = (r_s[1:] != r_s[:-1]) | (t_s[1:] != t_s[:-1])
    starts = np.flatnonzero(new)
    g_row, g_tok, g_first = r_s[starts], t_s[starts], p_s[starts]
    g_w = np.maximum.reduceat(w_s, starts)
    o2 = np.lexsort((g_first, g_row))
    counts = np.bincount(g_row, minlength=keep.shape[0])
    return g_tok[o2].astype(np.int64), g_w[o2].astype(np.float32), counts.astype(np.int64)


def _ragged_take(counts: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Flat indices that reorder a ragged array (row lengths ``counts``) into row order ``perm``."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    c = counts[perm]
    if c.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    base = np.repeat(starts[perm] - np.concatenate([[0], np.cumsum(c)[:-1]]), c)
    return base + np.arange(c.sum())


def _assemble(model, parts, n, lengths, dense, sparse) -> M3Output:
    order = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    inv = np.empty(n, dtype=np.int64)
    inv[order] = np.arange(n)  # sorted position of each input index
    out = M3Output(n_tokens=lengths)
    if dense:
        data = (np.concatenate([p[1].dense for p in parts]) if parts
                else np.zeros((0, model.hidden_size), np.float32))
        out.dense = np.ascontiguousarray(data[inv])
    if sparse:
        counts = np.concatenate([p[1].lex_counts for p in parts]) if parts else np.zeros(0, np.int64)
        take = _ragged_take(counts, inv)
        ids = np.concatenate([p[1].lex_ids for p in parts]) if parts else np.zeros(0, np.int64)
        ws = np.concatenate([p[1].lex_w for p in parts]) if parts else np.zeros(0, np.float32)
        indptr = np.concatenate([[0], np.cumsum(counts[inv])]).astype(np.int64)
        out.lexical = LexicalWeights(indptr, ids[take], ws[take], model.tokenizer.vocab_size)
    return out
