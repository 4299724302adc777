"""Every M3 score, defined once: dense, lexical, ColBERT (MaxSim), the weighted hybrid,
reciprocal-rank fusion and score normalisation, plus pair scoring (``compute_score``).

The padded ColBERT function :func:`maxsim` is the one search re-ranking and the training
losses use; ``compute_score`` is built from the same pieces.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .model import M3Model
    from .output import LexicalWeights, M3Output
    from .tokenize import M3Tokenizer

MODES = ("dense", "sparse", "colbert")
DEFAULT_WEIGHTS = (1.0, 1.0, 1.0)  # compute_score's default (dense, sparse, colbert)
PAPER_WEIGHTS = (1.0, 0.3, 1.0)  # the paper's w1, w2, w3 for "All"


# ---------------------------------------------------------------------------- dense
def dense_scores(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inner products of unit vectors: ``[Nq, H] × [Np, H] → [Nq, Np]`` (a ``[H]`` side gives 1-D)."""
    return np.asarray(q) @ np.asarray(p).T


# ---------------------------------------------------------------------------- lexical
def lexical_matching_score(lw1: Any, lw2: Any) -> Any:
    """``Σ_{t ∈ both} w1[t]·w2[t]`` over token-id dicts (str or int keys, not mixed).

    dict × dict → float; list × list → ``[len1, len2]`` array (as the reference).
    """
    if isinstance(lw1, Mapping) and isinstance(lw2, Mapping):
        if len(lw1) > len(lw2):
            lw1, lw2 = lw2, lw1
        return float(sum(float(w) * float(lw2[t]) for t, w in lw1.items() if t in lw2))
    if isinstance(lw1, list | tuple) and isinstance(lw2, list | tuple):
        return np.array([[lexical_matching_score(a, b) for b in lw2] for a in lw1], dtype=np.float64)
    raise ValueError(
        f"lexical weights must both be dicts or both lists of dicts, got {type(lw1).__name__} and "
        f"{type(lw2).__name__}"
    )


def lexical_scores(q: LexicalWeights | Any, p: LexicalWeights | Any) -> np.ndarray:
    """All-pairs lexical scores ``[Nq, Np]`` via sparse matmul (``LexicalWeights`` or CSR inputs)."""
    qm = q.to_csr() if hasattr(q, "to_csr") else q
    pm = p.to_csr() if hasattr(p, "to_csr") else p
    return np.asarray((qm @ pm.T).todense(), dtype=np.float32)


def lexical_pair_scores(q: LexicalWeights, p: LexicalWeights, qi: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Lexical score of each pair ``(q[qi[k]], p[pi[k]])`` → ``[K]``, without the full matrix."""
    qm, pm = q.to_csr()[qi], p.to_csr()[pi]
    return np.asarray(qm.multiply(pm).sum(axis=1), dtype=np.float64).ravel()


def lexical_token_scores(
    q_ids: torch.Tensor, q_weights: torch.Tensor, p_ids: torch.Tensor, p_weights: torch.Tensor
) -> torch.Tensor:
    """Lexical scores ``[B, C]`` from padded token ids and weights, differentiable.

    ``q_ids/q_weights [B, Lq]``, ``p_ids/p_weights [C, Lp]``. Per text, a token's weight is the max
    over its positions; the score sums ``w_q[t]·w_p[t]`` over shared tokens — the same value as the
    vocabulary-space vectors of the reference, but over the ids present in the batch only
    (``[B + C, U]``, U = distinct ids) instead of a ``[B, L, V]`` tensor. Callers zero the weights
    of padding and of tokens that must not count (specials).
    """
    uniq, inv = torch.unique(torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)]), return_inverse=True)
    n_q = q_ids.numel()
    dtype = torch.promote_types(q_weights.dtype, p_weights.dtype)
    qv = q_weights.new_zeros((q_ids.shape[0], len(uniq)), dtype=dtype).scatter_reduce(
        1, inv[:n_q].view(q_ids.shape), q_weights.to(dtype), reduce="amax")
    pv = p_weights.new_zeros((p_ids.shape[0], len(uniq)), dtype=dtype).scatter_reduce(
        1, inv[n_q:].view(p_ids.shape), p_weights.to(dtype), reduce="amax")
    return qv @ pv.T


# ---------------------------------------------------------------------------- ColBERT
def colbert_score(q: np.ndarray | torch.Tensor, p: np.ndarray | torch.Tensor) -> float:
    """MaxSim of one pair: ``(1/n_q) Σ_i max_j q_i·p_j`` for ``q [n_q, D]``, ``p [n_p, D]``."""
    qa, pa = np.asarray(q, dtype=np.float32), np.asarray(p, dtype=np.float32)
    if len(qa) == 0 or len(pa) == 0:
        return 0.0
    return float((qa @ pa.T).max(axis=1).sum() / len(qa))


def maxsim(
    q: torch.Tensor,
    q_mask: torch.Tensor,
    p: torch.Tensor,
    p_mask: torch.Tensor,
    *,
    pairwise: bool = False,
    clamp_padding: bool = False,
) -> torch.Tensor:
    """Padded MaxSim. ``q [B, Lq, D]``, ``p [C, Lp, D]``, masks ``[B, Lq]`` / ``[C, Lp]`` (1 = real).

    ``pairwise=False`` scores every query against every passage → ``[B, C]``;
    ``pairwise=True`` (B == C) scores row b against row b → ``[B]``. Padded passage positions
    are excluded from the max, unless ``clamp_padding=True``, which lets their zero vectors in
    (score 0) exactly as the reference's batched code does. A query is divided by its real rows.
    """
    qm = q_mask.to(q.dtype)
    denom = qm.sum(-1).clamp_min(1)
    if pairwise:
        sim = torch.einsum("bqd,bpd->bqp", q, p)
        pm = p_mask.bool()[:, None, :]
    else:
        sim = torch.einsum("bqd,cpd->bcqp", q, p)
        pm = p_mask.bool()[None, :, None, :]
    if not clamp_padding:
        sim = sim.masked_fill(~pm, float("-inf"))
    best = sim.max(-1).values
    if pairwise:
        best = best.masked_fill(qm == 0, 0)
        return best.sum(-1) / denom
    best = best.masked_fill(qm[:, None, :] == 0, 0)
    return best.sum(-1) / denom[:, None]


def maxsim_packed(q: np.ndarray, p: np.ndarray, p_offsets: np.ndarray) -> np.ndarray:
    """MaxSim of one query ``q [n_q, D]`` against C passages packed as ``p [T, D]`` with
    ``p_offsets [C+1]`` (passage c owns rows ``p_offsets[c]:p_offsets[c+1]``) → ``[C]`` float32.

    Same value as :func:`colbert_score` per passage (an empty passage or query scores 0), with
    one ``[n_q, T]`` matmul and no padding — what search re-ranking uses.
    """
    return maxsim_grouped([q], p, p_offsets)[0]


def maxsim_grouped(queries: Sequence[np.ndarray], p: np.ndarray, p_offsets: np.ndarray) -> list[np.ndarray]:
    """:func:`maxsim_packed` of several queries against the same packed passages, with one
    ``[Σ n_q, T]`` matmul → one ``[C]`` float32 array per query."""
    qs = [np.asarray(x, dtype=np.float32) for x in queries]
    n_c = len(p_offsets) - 1
    if not qs:
        return []
    if len(p) == 0 or sum(len(x) for x in qs) == 0:
        return [np.zeros(n_c, dtype=np.float32) for _ in qs]
    qcat = torch.from_numpy(np.concatenate(qs) if len(qs) > 1 else qs[0])
    sim = (qcat @ torch.from_numpy(np.asarray(p, dtype=np.float32)).T).numpy()  # [Σ n_q, T]
    out, start = [], 0
    for x in qs:
        out.append(maxsim_reduce(sim[start : start + len(x)], p_offsets))
        start += len(x)
    return out


def maxsim_reduce(sim: np.ndarray, p_offsets: np.ndarray) -> np.ndarray:
    """``(1/n_q) Σ_i max_{j ∈ c} sim[i, j]`` for each passage c of ``p_offsets [C+1]`` → ``[C]`` float32.

    ``sim [n_q, T]`` holds one query's token similarities to C packed passages (exact ones, or
    approximate ones such as centroid scores); an empty passage scores 0.
    """
    offsets = np.asarray(p_offsets, dtype=np.int64)
    out = np.zeros(len(offsets) - 1, dtype=np.float32)
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        return out
    nonempty = np.diff(offsets) > 0
    # reduceat over the starts of non-empty passages: each segment then ends where the next begins
    best = np.maximum.reduceat(sim, offsets[:-1][nonempty], axis=1)  # [n_q, C_nonempty]
    out[nonempty] = best.sum(0) / sim.shape[0]
    return out


# ---------------------------------------------------------------------------- fusion
def check_hybrid_weights(weights: object, where: str = "weights") -> tuple[float, float, float]:
    """``(w_dense, w_sparse, w_colbert)`` as floats; ``ValueError`` naming ``where`` unless ``weights``
    is three finite, non-negative numbers with a positive sum."""
    try:
        w = tuple(float(x) for x in weights)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected three numbers (dense, sparse, colbert), got {weights!r}") from None
    if len(w) != 3 or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) == 0:
        raise ValueError(f"{where}: expected three finite, non-negative numbers (dense, sparse, colbert) "
                         f"with a positive sum, got {weights!r}")
    return w  # type: ignore[return-value]


def weighted_sum(scores: Mapping[str, Any], weights: Mapping[str, float]) -> Any:
    """``Σ w_m·s_m / Σ w_m`` over the modes named in ``weights`` (arrays or floats)."""
    total = sum(weights.values())
    if total == 0:
        raise ValueError("weights sum to zero")
    return sum(w * np.asarray(scores[m], dtype=np.float64) for m, w in weights.items()) / total


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], *, k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[Hashable, float]]:
    """RRF (Cormack et al. 2009): ``Σ_r w_r / (k + rank_r(d))`` with ranks from 1; best first.

    Ties keep the order in which documents first appear in the rankings.
    """
    if weights is not None and len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict[Hashable, float] = {}
    for r, ranking in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[r])
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])


def minmax_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale to [0, 1] along ``axis``; a constant row becomes all zeros."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0.0)


def zscore_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation along ``axis`` (constant → zeros)."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = x.mean(axis=axis, keepdims=True), x.std(axis=axis, keepdims=True)
    return np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1), 0.0)


# ---------------------------------------------------------------------------- pair scoring
def compute_score(
    model: M3Model,
    pairs: Sequence[Sequence[str]] | Sequence[str],
    *,
    batch_size: int = 256,
    max_query_length: int = 512,
    max_passage_length: int = 512,
    weights_for_different_modes: Sequence[float] | None = None,
    flag_parity: bool = False,
) -> dict[str, Any]:
    """Score (query, passage) pairs with every mode, as the reference's ``compute_score``.

    Returns ``{"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}``, each a
    list of floats (a float when ``pairs`` is one pair). Weights are ``[dense, sparse, colbert]``
    (default ``[1, 1, 1]``). Each distinct text is encoded once. ColBERT scores are exact per pair
    (padding never enters the max), so they do not depend on ``batch_size``; ``flag_parity=True``
    reproduces the reference's batch-dependent padding clamp instead.
    """
    if isinstance(pairs, str | bytes):
        raise TypeError("pairs must be a (query, passage) pair or a list of pairs, not a single string")
    if len(pairs) == 0:
        return {k: [] for k in ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")}
    single = isinstance(pairs[0], str)
    plist = [pairs] if single else list(pairs)
    for i, pair in enumerate(plist):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise TypeError(f"pair at index {i} is not a (query, passage) pair of two strings")
        for j, t in enumerate(pair):
            if not isinstance(t, str):
                raise TypeError(f"pair at index {i}: {'query' if j == 0 else 'passage'} is {type(t).__name__}, "
                                "expected str")
    w = list(DEFAULT_WEIGHTS if weights_for_different_modes is None else weights_for_different_modes)
    if len(w) != 3:
        raise ValueError(f"weights_for_different_modes needs 3 values [dense, sparse, colbert], got {len(w)}")

    queries, qi = np.unique(np.array([p[0] for p in plist], dtype=object), return_inverse=True)
    passages, pi = np.unique(np.array([p[1] for p in plist], dtype=object), return_inverse=True)
    kw = {"batch_size": batch_size, "return_dense": True, "return_sparse": True, "return_colbert": True}
    qo = model.encode(list(queries), max_length=max_query_length, **kw)
    po = model.encode(list(passages), max_length=max_passage_length, **kw)
    scores = pair_scores(qo, po, qi, pi, w, batch_size=batch_size, flag_parity=flag_parity)
    if single:
        return {k: float(v[0]) for k, v in scores.items()}
    return {k: [float(x) for x in v] for k, v in scores.items()}


def pair_scores(qo: M3Output, po: M3Output, qi: np.ndarray, pi: np.ndarray,
                weights: Sequence[float] = DEFAULT_WEIGHTS, *, batch_size: int = 256,
                flag_parity: bool = False) -> dict[str, np.ndarray]:
    """The five :func:`compute_score` scores of the pairs ``(qo[qi[k]], po[pi[k]])`` → float64 arrays ``[K]``.

    ``qo`` / ``po``: encoded queries / passages with dense, lexical and ColBERT outputs;
    ``weights``: ``[dense, sparse, colbert]``. For callers that encode the texts themselves.
    """
    dense = np.einsum("kh,kh->k", qo.dense[qi], po.dense[pi]).astype(np.float64)
    sparse = lexical_pair_scores(qo.lexical, po.lexical, qi, pi)
    colbert = _colbert_pairs(qo, po, qi, pi, batch_size, flag_parity)
    scores: dict[str, np.ndarray] = {"colbert": colbert, "sparse": sparse, "dense": dense}
    wd, ws, wc = (float(x) for x in weights)
    scores["sparse+dense"] = (ws * sparse + wd * dense) / (ws + wd)
    scores["colbert+sparse+dense"] = (wc * colbert + ws * sparse + wd * dense) / (wd + ws + wc)
    return scores


def _colbert_pairs(qo, po, qi, pi, batch_size: int, flag_parity: bool) -> np.ndarray:
    """ColBERT score of each pair, padded in chunks of ``batch_size`` pairs."""
    k = len(qi)
    out = np.empty(k, dtype=np.float64)
    plen = po.colbert.lengths[pi]
    # parity mode keeps the reference's chunks (input order); otherwise group similar lengths
    if flag_parity:
        chunks = [np.arange(s, min(s + batch_size, k)) for s in range(0, k, batch_size)]
    else:
        chunks = _length_chunks(plen, batch_size, max_rows=_MAXSIM_ROWS)
    for idx in chunks:
        q, qmask = _pad([qo.colbert[i] for i in qi[idx]])
        p, pmask = _pad([po.colbert[i] for i in pi[idx]])
        out[idx] = maxsim(q, qmask, p, pmask, pairwise=True, clamp_padding=flag_parity).double().numpy()
    return out


# padded passage rows per ColBERT chunk: bounds the [B, Lq, Lp] similarity tensor when one long
# passage would otherwise pad a whole batch of short ones
_MAXSIM_ROWS = 256 * 512


def _length_chunks(lengths: np.ndarray, batch_size: int, *, max_rows: int) -> list[np.ndarray]:
    """Indices grouped longest first, each chunk ≤ ``batch_size`` items and ≤ ``max_rows`` padded rows."""
    order = np.argsort(-lengths, kind="stable")
    chunks, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        n = max(1, min(batch_size, max_rows // longest))
        chunks.append(order[start : start + n])
        start += n
    return chunks


def _pad(mats: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lmax = max(1, max(len(m) for m in mats))
    d = mats[0].shape[1]
    arr = np.zeros((len(mats), lmax, d), dtype=np.float32)
    mask = np.zeros((len(mats), lmax), dtype=bool)
    for r, m in enumerate(mats):
        arr[r, : len(m)] = m
        mask[r, : len(m)] = True
    return torch.from_numpy(arr), torch.from_numpy(mask)


def convert_id_to_token(tokenizer: M3Tokenizer, lexical_weights: Any) -> Any:
    """``{token id: w}`` → ``{token text: w}`` (``▁`` dropped, as ``tokenizer.decode([id])``).

    Accepts a dict or a list of dicts; a one-element list is unwrapped, as in the reference.
    Texts of different ids can coincide (e.g. ``▁a`` and ``a``); the later id wins, as in the reference.
    """
    if isinstance(lexical_weights, Mapping):
        items = [lexical_weights]
    elif isinstance(lexical_weights, list | tuple):
        items = list(lexical_weights)
    else:
        raise TypeError(f"expected a dict or a list of dicts, got {type(lexical_weights).__name__}")
    out = []
    for i, lw in enumerate(items):
        if not isinstance(lw, Mapping):
            raise TypeError(f"item {i} is {type(lw).__name__}, expected a dict of token id → weight")
        out.append({tokenizer.decode_id(int(t)): w for t, w in lw.items()})
    return out[0] if len(out) == 1 else out

