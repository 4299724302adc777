"""M3 training losses: InfoNCE per head and for the ensemble, self-knowledge distillation, teacher KD.

Score matrices are ``[B, B·G]`` (query b's group is columns b·G … b·G+G-1, positive first), divided
by the temperature, and come from the shared definitions: dense inner products,
:func:`m3embed.scoring.lexical_token_scores` and :func:`m3embed.scoring.maxsim`.

Weightings (λ = ``head_loss_weights``, default (1, 0.1, 1)):

* ``reference`` (FlagEmbedding 1.4.2 and the paper's final version):
  ``L = (λd·L_d + L_e + λs·L_s + λc·L_c) / 4``; with SKD ``L ← (L + (λd·L'_d + λs·L'_s + λc·L'_c) / 3) / 2``.
* ``sum`` (the formulas as printed in the paper's first version): ``L = λd·L_d + λs·L_s + λc·L_c + L_e``,
  with SKD ``L ← L + λd·L'_d + λs·L'_s + λc·L'_c``.

SKD: ``T = softmax(S_e)`` (detached) over each score row, ``L'_x = -mean_b Σ_k T_bk log softmax(S_x)_bk``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..scoring import lexical_token_scores, maxsim
from .config import TrainConfig

HEADS = ("dense", "sparse", "colbert")


@dataclass
class Reps:
    """Representations of ``N`` texts: ids/mask ``[N, L]``; dense ``[N, H]``; sparse token weights
    ``[N, L]`` (zero at padding and special tokens); ColBERT ``[N, L-1, D]`` (zero rows at padding)."""

    ids: torch.Tensor
    mask: torch.Tensor
    dense: torch.Tensor | None = None
    sparse: torch.Tensor | None = None
    colbert: torch.Tensor | None = None


@dataclass
class LossConfig:
    temperature: float = 0.02
    ensemble_weights: tuple[float, float, float] = (1.0, 0.3, 1.0)
    head_loss_weights: tuple[float, float, float] = (1.0, 0.1, 1.0)
    weighting: str = "reference"
    unified: bool = True  #: all three heads; False: dense loss only (stage "dense")
    kd_loss_type: str = "kl_div"
    in_batch_negatives: bool = True
    colbert_clamp: bool = False  #: reference's padded MaxSim (padded rows score 0) instead of exact masking

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LossConfig:
        return cls(temperature=cfg.temperature, ensemble_weights=tuple(cfg.ensemble_weights),
                   head_loss_weights=tuple(cfg.head_loss_weights), weighting=cfg.loss_weighting,
                   unified=cfg.trains_heads, kd_loss_type=cfg.kd_loss_type,
                   in_batch_negatives=cfg.in_batch_negatives, colbert_clamp=cfg.colbert_padding == "clamp")


@dataclass
class LossOutput:
    """``loss``: the training objective as reported; ``backward``: what to differentiate (equal to
    ``loss`` on one process; with cross-device heads their terms are scaled by the world size so that
    averaging gradients over ranks gives the gradient of the one-process loss over the global batch)."""

    loss: torch.Tensor
    backward: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    sparse_all_zero: bool = False


# ---------------------------------------------------------------------------- score matrices
def _wide(t: torch.Tensor) -> torch.Tensor:
    """Half-precision representations (autocast) are scored in fp32; fp32/fp64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def dense_score_matrix(q: Reps, p: Reps) -> torch.Tensor:
    return _wide(q.dense) @ _wide(p.dense).T


def sparse_score_matrix(q: Reps, p: Reps) -> torch.Tensor:
    return lexical_token_scores(q.ids, _wide(q.sparse), p.ids, _wide(p.sparse))


#: Largest token-similarity block ``[b, C, Lq, Lp]`` built at once (fp32: 1 GiB). MaxSim over the whole
#: batch is ``[B, B·G, Lq, Lp]`` — quadratic in the batch (8 GB at 64 queries × 2 passages of 8192 tokens),
#: and its backward rebuilds it; scoring a few queries at a time keeps only one block alive.
MAXSIM_BLOCK_ELEMENTS = 2**28


def colbert_score_matrix(q: Reps, p: Reps, *, clamp: bool = False) -> torch.Tensor:
    qc, qm, pc, pm = _wide(q.colbert), q.mask[:, 1:], _wide(p.colbert), p.mask[:, 1:]
    rows = max(1, MAXSIM_BLOCK_ELEMENTS // max(1, pc.shape[0] * qc.shape[1] * pc.shape[1]))
    if rows >= qc.shape[0]:
        return maxsim(qc, qm, pc, pm, clamp_padding=clamp)
    return torch.cat([maxsim(qc[i : i + rows], qm[i : i + rows], pc, pm, clamp_padding=clamp)
                      for i in range(0, qc.shape[0], rows)])


SCORE_FNS: dict[str, Callable[..., torch.Tensor]] = {
    "dense": dense_score_matrix, "sparse": sparse_score_matrix, "colbert": colbert_score_matrix,
}


def local_block(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each query's own group ``[B, G]`` out of ``[B, B·G]`` (identity when already ``[B, G]``)."""
    b = scores.shape[0]
    if scores.shape[1] == group_size:
        return scores
    return scores.view(b, b, group_size)[torch.arange(b), torch.arange(b)]


def _targets(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    b = scores.shape[0]
    step = 0 if scores.shape[1] == group_size else group_size  # [B, G] block: the positive is column 0
    return torch.arange(b, device=scores.device) * step


# ---------------------------------------------------------------------------- losses on score matrices
def info_nce(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Cross-entropy of each row with its positive column (b·G, or 0 for a ``[B, G]`` block)."""
    return F.cross_entropy(scores, _targets(scores, group_size))


def soft_cross_entropy(teacher_probs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``-mean_b Σ_k T_bk log softmax(S)_bk`` (same gradient as KL(T‖softmax S))."""
    return -(teacher_probs * torch.log_softmax(scores, dim=-1)).sum(-1).mean()


def m3_kd_loss(teacher_probs: torch.Tensor, scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """The reference's ``m3_kd_loss``: ``Σ_i mean_b T_bi · CE(S_b with earlier group members masked, b·G+i)``."""
    base = _targets(scores, group_size)
    total = scores.new_zeros(())
    masked = scores
    neg = torch.finfo(scores.dtype).min
    for i in range(group_size):
        target = base + i
        total = total + (teacher_probs[:, i] * F.cross_entropy(masked, target, reduction="none")).mean()
        masked = masked.scatter(1, target[:, None], neg)
    return total


def contrastive_loss(scores: torch.Tensor, group_size: int, teacher_probs: torch.Tensor | None = None,
                     kd_loss_type: str = "kl_div") -> torch.Tensor:
    """InfoNCE, or with teacher probabilities ``[B, G]`` the reference's KD variants:
    ``kl_div`` = soft CE on the own group + InfoNCE; ``m3_kd_loss`` as :func:`m3_kd_loss`."""
    if teacher_probs is None:
        return info_nce(scores, group_size)
    if kd_loss_type == "kl_div":
        return soft_cross_entropy(teacher_probs, local_block(scores, group_size)) + info_nce(scores, group_size)
    if kd_loss_type == "m3_kd_loss":
        return m3_kd_loss(teacher_probs, scores, group_size)
    raise ValueError(f"kd_loss_type {kd_loss_type!r}: expected kl_div or m3_kd_loss")


def combine(parts: dict[str, torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    """The weighted total of the per-head losses ``parts`` (keys dense, sparse, colbert, ensemble, skd_*)."""
    if not cfg.unified:
        return parts["dense"]
    ld, ls, lc = cfg.head_loss_weights
    base = ld * parts["dense"] + parts["ensemble"] + ls * parts["sparse"] + lc * parts["colbert"]
    skd = None
    if "skd_dense" in parts:
        skd = ld * parts["skd_dense"] + ls * parts["skd_sparse"] + lc * parts["skd_colbert"]
    if cfg.weighting == "sum":
        return base if skd is None else base + skd
    base = base / 4
    return base if skd is None else (base + skd / 3) / 2


# ---------------------------------------------------------------------------- the M3 objective
def m3_loss(
    q: Reps,
    p: Reps,
    group_size: int,
    cfg: LossConfig,
    *,
    self_distill: bool = False,
    teacher_scores: torch.Tensor | None = None,
    gather: Callable[[Reps, tuple[str, ...]], Reps] | None = None,
    gather_heads: tuple[str, ...] = (),
    rank: int = 0,
    world_size: int = 1,
) -> LossOutput:
    """The full objective for one batch of ``B`` queries and ``B·G`` passages.

    ``teacher_scores [B, G]`` (raw, softmaxed here) switch the per-head losses to KD. ``gather``
    (all-gather with the local gradient kept) is applied to the heads in ``gather_heads``: their
    losses run over the world's ``[W·B, W·B·G]`` matrix; the ensemble and SKD then use the local block
    unless every head is gathered.
    """
    heads = HEADS if cfg.unified else ("dense",)
    gathered = tuple(h for h in heads if h in gather_heads) if (gather is not None and cfg.in_batch_negatives) else ()
    teacher = None if teacher_scores is None else torch.softmax(_wide(teacher_scores), dim=-1)
    teacher_world = None
    if teacher is not None and gathered:
        from .distributed import all_gather_no_grad

        teacher_world = all_gather_no_grad(teacher)
    qw = pw = None
    if gathered:
        qw, pw = gather(q, gathered), gather(p, gathered)
    tau = cfg.temperature
    scores: dict[str, torch.Tensor] = {}  # what each head's loss runs over
    for h in heads:
        kw = {"clamp": cfg.colbert_clamp} if h == "colbert" else {}
        s = SCORE_FNS[h](qw, pw, **kw) if h in gathered else SCORE_FNS[h](q, p, **kw)
        scores[h] = s / tau
    if not cfg.in_batch_negatives:
        scores = {h: local_block(s, group_size) for h, s in scores.items()}
    parts: dict[str, torch.Tensor] = {}
    for h in heads:
        parts[h] = contrastive_loss(scores[h], group_size, teacher_world if h in gathered else teacher,
                                    cfg.kd_loss_type)
    world_scope = set(gathered)
    if cfg.unified:
        all_world = len(gathered) == len(heads)
        if all_world:
            ens_in = scores
            ens_teacher = teacher_world
        else:  # the ensemble mixes heads: bring gathered ones back to this rank's block
            ens_in = {h: _local_rows(s, rank, q.ids.shape[0], p.ids.shape[0]) if h in gathered else s
                      for h, s in scores.items()}
            ens_teacher = teacher
        wd, ws, wc = cfg.ensemble_weights
        ens = wd * ens_in["dense"] + ws * ens_in["sparse"] + wc * ens_in["colbert"]
        scores["ensemble"] = ens
        parts["ensemble"] = contrastive_loss(ens, group_size, ens_teacher, cfg.kd_loss_type)
        if all_world:
            world_scope.add("ensemble")
        if self_distill:
            t = torch.softmax(ens.detach(), dim=-1)
            for h in heads:
                parts[f"skd_{h}"] = soft_cross_entropy(t, ens_in[h])
                if all_world:
                    world_scope.add(f"skd_{h}")
    loss = combine(parts, cfg)
    if world_scope and world_size > 1:
        backward = combine({k: v * world_size if k in world_scope else v for k, v in parts.items()}, cfg)
    else:
        backward = loss
    sparse_zero = False
    if cfg.unified and q.sparse is not None and p.sparse is not None:
        sparse_zero = bool(q.sparse.detach().max() <= 0) and bool(p.sparse.detach().max() <= 0)
    return LossOutput(loss=loss, backward=backward, parts={k: float(v.detach()) for k, v in parts.items()},
                      scores=scores, sparse_all_zero=sparse_zero)


def _local_rows(world_scores: torch.Tensor, rank: int, n_q: int, n_p: int) -> torch.Tensor:
    """This rank's ``[B, B·G]`` block of a world score matrix (ranks' rows and columns are contiguous)."""
    return world_scores[rank * n_q : (rank + 1) * n_q, rank * n_p : (rank + 1) * n_p]
