"""Training losses against hand computations (plain Python floats) on small fixed tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from m3embed.train.losses import (
    LossConfig,
    Reps,
    colbert_score_matrix,
    contrastive_loss,
    m3_kd_loss,
    m3_loss,
    sparse_score_matrix,
)

TAU = 0.5
G = 2


# ---------------------------------------------------------------------------- hand helpers (no torch)
def ce(row: list[float], target: int) -> float:
    m = max(row)
    return -(row[target] - m - math.log(sum(math.exp(x - m) for x in row)))


def log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def softmax(row: list[float]) -> list[float]:
    return [math.exp(x) for x in log_softmax(row)]


def info_nce(mat: list[list[float]], g: int) -> float:
    return sum(ce(r, b * g) for b, r in enumerate(mat)) / len(mat)


def soft_ce(teacher: list[list[float]], mat: list[list[float]]) -> float:
    return sum(-sum(t * ls for t, ls in zip(trow, log_softmax(r), strict=True))
               for trow, r in zip(teacher, mat, strict=True)) / len(mat)


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


# ---------------------------------------------------------------------------- fixed inputs: B=2 queries, G=2
QD = [unit([1.0, 0.2, 0.0]), unit([0.1, 1.0, 0.3])]
PD = [unit([0.9, 0.1, 0.1]), unit([0.0, 0.3, 1.0]), unit([0.2, 0.9, 0.0]), unit([1.0, 1.0, 1.0])]
PAD = 0
# token ids (0 = pad) and sparse weights; padding / specials already carry weight 0
Q_IDS = [[11, 12, 11, 0], [13, 14, 0, 0]]
Q_W = [[0.5, 0.25, 0.75, 0.0], [1.0, 0.5, 0.0, 0.0]]
P_IDS = [[11, 15, 0], [12, 11, 12], [13, 16, 0], [14, 13, 11]]
P_W = [[0.4, 0.9, 0.0], [0.2, 0.1, 0.6], [0.3, 0.8, 0.0], [0.5, 0.2, 0.7]]
# ColBERT rows (after the leading [CLS]); masks count real rows
QC = [[unit([1, 0]), unit([0, 1]), [0.0, 0.0]], [unit([1, 1]), unit([1, -1]), unit([-1, 0])]]
QC_LEN = [2, 3]
PC = [[unit([1, 0.2]), [0.0, 0.0]], [unit([-1, 0.1]), unit([0.3, 1])], [unit([-1, -1]), [0.0, 0.0]],
      [unit([0, 1]), unit([1, 0])]]
PC_LEN = [1, 2, 1, 2]


def sparse_hand(q, p):
    def vec(ids, ws):
        d: dict[int, float] = {}
        for i, w in zip(ids, ws, strict=True):
            if w > 0:
                d[i] = max(d.get(i, 0.0), w)
        return d

    a, b = vec(*q), vec(*p)
    return sum(w * b[t] for t, w in a.items() if t in b)


def colbert_hand(qi, pi, clamp):
    rows = QC[qi][: QC_LEN[qi]]
    cand = PC[pi][: PC_LEN[pi]]
    total = 0.0
    for r in rows:
        best = max(dot(r, c) for c in cand)
        if clamp and PC_LEN[pi] < max(PC_LEN):  # the reference's zero padding rows enter the max
            best = max(best, 0.0)
        total += best
    return total / len(rows)


def matrices(clamp=False):
    d = [[dot(q, p) / TAU for p in PD] for q in QD]
    s = [[sparse_hand((Q_IDS[b], Q_W[b]), (P_IDS[k], P_W[k])) / TAU for k in range(4)] for b in range(2)]
    c = [[colbert_hand(b, k, clamp) / TAU for k in range(4)] for b in range(2)]
    e = [[d[b][k] + 0.3 * s[b][k] + c[b][k] for k in range(4)] for b in range(2)]
    return d, s, c, e


def reps():
    def mask_from(lens, width):
        return torch.tensor([[1] * n + [0] * (width - n) for n in lens])

    # ids/mask carry a leading [CLS] column (id 1) that the ColBERT rows skip
    q = Reps(ids=torch.tensor(Q_IDS), mask=mask_from([1 + n for n in QC_LEN], 4),
             dense=torch.tensor(QD, dtype=torch.float64, requires_grad=True),
             sparse=torch.tensor(Q_W, dtype=torch.float64, requires_grad=True),
             colbert=torch.tensor(QC, dtype=torch.float64, requires_grad=True))
    p = Reps(ids=torch.tensor(P_IDS), mask=mask_from([1 + n for n in PC_LEN], 3),
             dense=torch.tensor(PD, dtype=torch.float64, requires_grad=True),
             sparse=torch.tensor(P_W, dtype=torch.float64, requires_grad=True),
             colbert=torch.tensor(PC, dtype=torch.float64, requires_grad=True))
    return q, p


def cfg(**kw) -> LossConfig:
    return LossConfig(temperature=TAU, **kw)


# ---------------------------------------------------------------------------- score matrices
def test_sparse_scores_match_vocabulary_space_by_hand():
    q, p = reps()
    _, s, _, _ = matrices()
    got = sparse_score_matrix(q, p) / TAU
    np.testing.assert_allclose(got.detach().numpy(), s, rtol=1e-12)
    # q0 has id 11 twice (0.5, 0.75): max 0.75 counts; p1 has 12 twice (0.2, 0.6) → 0.25·0.6 + 0.75·0.1
    assert float(got[0, 1].detach()) * TAU == pytest.approx(0.25 * 0.6 + 0.75 * 0.1)


@pytest.mark.parametrize("clamp", [False, True])
def test_colbert_scores_exact_and_reference_clamp(clamp):
    q, p = reps()
    _, _, c, _ = matrices(clamp)
    got = colbert_score_matrix(q, p, clamp=clamp) / TAU
    np.testing.assert_allclose(got.detach().numpy(), c, rtol=1e-12)


def test_clamp_changes_a_short_passage_with_negative_best_match():
    exact, clamped = matrices(False)[2], matrices(True)[2]
    # q1 vs p2 (one row, all similarities negative): exact is negative, the clamp lifts it
    assert exact[1][2] < clamped[1][2]
    assert exact[0][3] == clamped[0][3]  # p3 is the longest passage: no padding, no clamp


# ---------------------------------------------------------------------------- per-head InfoNCE
def test_each_head_and_ensemble_infonce_by_hand():
    q, p = reps()
    d, s, c, e = matrices()
    out = m3_loss(q, p, G, cfg(), self_distill=False)
    assert out.parts["dense"] == pytest.approx(info_nce(d, G), rel=1e-10)
    assert out.parts["sparse"] == pytest.approx(info_nce(s, G), rel=1e-10)
    assert out.parts["colbert"] == pytest.approx(info_nce(c, G), rel=1e-10)
    assert out.parts["ensemble"] == pytest.approx(info_nce(e, G), rel=1e-10)
    want = (info_nce(d, G) + info_nce(e, G) + 0.1 * info_nce(s, G) + info_nce(c, G)) / 4
    assert out.loss.item() == pytest.approx(want, rel=1e-10)
    assert "skd_dense" not in out.parts


def test_self_distillation_reference_weighting_by_hand():
    q, p = reps()
    d, s, c, e = matrices()
    out = m3_loss(q, p, G, cfg(), self_distill=True)
    t = [softmax(r) for r in e]
    skd = {k: soft_ce(t, m) for k, m in (("dense", d), ("sparse", s), ("colbert", c))}
    for k, v in skd.items():
        assert out.parts[f"skd_{k}"] == pytest.approx(v, rel=1e-10)
    base = (info_nce(d, G) + info_nce(e, G) + 0.1 * info_nce(s, G) + info_nce(c, G)) / 4
    want = (base + (skd["dense"] + 0.1 * skd["sparse"] + skd["colbert"]) / 3) / 2
    assert out.loss.item() == pytest.approx(want, rel=1e-10)


def test_sum_weighting_by_hand():
    q, p = reps()
    d, s, c, e = matrices()
    out = m3_loss(q, p, G, cfg(weighting="sum"), self_distill=True)
    t = [softmax(r) for r in e]
    base = info_nce(d, G) + 0.1 * info_nce(s, G) + info_nce(c, G) + info_nce(e, G)
    skd = soft_ce(t, d) + 0.1 * soft_ce(t, s) + soft_ce(t, c)
    assert out.loss.item() == pytest.approx(base + skd, rel=1e-10)


def test_dense_stage_is_dense_infonce_only():
    q, p = reps()
    d, *_ = matrices()
    out = m3_loss(q, p, G, cfg(unified=False), self_distill=True)
    assert out.loss.item() == pytest.approx(info_nce(d, G), rel=1e-10)
    assert set(out.parts) == {"dense"}


def test_ensemble_weights_and_clamp_option():
    q, p = reps()
    d, s, c, _ = matrices(clamp=True)
    e = [[0.5 * d[b][k] + 1.0 * s[b][k] + 2.0 * c[b][k] for k in range(4)] for b in range(2)]
    out = m3_loss(q, p, G, cfg(ensemble_weights=(0.5, 1.0, 2.0), colbert_clamp=True))
    assert out.parts["colbert"] == pytest.approx(info_nce(c, G), rel=1e-10)
    assert out.parts["ensemble"] == pytest.approx(info_nce(e, G), rel=1e-10)


def test_no_in_batch_negatives_uses_own_group_only():
    q, p = reps()
    d, s, c, e = matrices()

    def block(m):
        return [m[b][b * G : b * G + G] for b in range(2)]

    out = m3_loss(q, p, G, cfg(in_batch_negatives=False), self_distill=False)
    assert out.parts["dense"] == pytest.approx(sum(ce(r, 0) for r in block(d)) / 2, rel=1e-10)
    for name, m in (("sparse", s), ("colbert", c), ("ensemble", e)):
        assert out.parts[name] == pytest.approx(sum(ce(r, 0) for r in block(m)) / 2, rel=1e-10)


# ---------------------------------------------------------------------------- teacher scores (KD)
def test_kl_div_teacher_loss_by_hand():
    q, p = reps()
    d, *_ = matrices()
    teacher = [[2.0, 0.5], [0.1, 1.0]]
    t = [softmax(r) for r in teacher]
    out = m3_loss(q, p, G, cfg(unified=False, kd_loss_type="kl_div"),
                  teacher_scores=torch.tensor(teacher, dtype=torch.float64))
    own = [d[b][b * G : b * G + G] for b in range(2)]
    assert out.loss.item() == pytest.approx(soft_ce(t, own) + info_nce(d, G), rel=1e-10)


def test_m3_kd_loss_by_hand():
    _, _, _, e = matrices()
    teacher = [[0.7, 0.3], [0.4, 0.6]]
    want = 0.0
    for i in range(G):
        rows = []
        for b in range(2):
            row = list(e[b])
            for k in range(i):  # earlier group members are masked out
                row[b * G + k] = -1e30
            rows.append(teacher[b][i] * ce(row, b * G + i))
        want += sum(rows) / 2
    got = m3_kd_loss(torch.tensor(teacher, dtype=torch.float64), torch.tensor(e, dtype=torch.float64), G)
    assert float(got) == pytest.approx(want, rel=1e-10)
    via = contrastive_loss(torch.tensor(e, dtype=torch.float64), G, torch.tensor(teacher, dtype=torch.float64),
                           "m3_kd_loss")
    assert float(via) == pytest.approx(want, rel=1e-10)


# ---------------------------------------------------------------------------- gradients
def _grads(q, p):
    return [t.grad.clone() for r in (q, p) for t in (r.dense, r.sparse, r.colbert)]


@pytest.mark.parametrize("detach", [True, False])
def test_skd_teacher_is_detached_and_every_input_gets_gradient(detach):
    from m3embed.train.losses import dense_score_matrix

    q, p = reps()
    out = m3_loss(q, p, G, cfg(), self_distill=True)
    out.loss.backward()
    got = _grads(q, p)
    assert all(float(g.abs().sum()) > 0 for g in got)
    # the same objective written out by hand from the (hand-checked) score matrices
    q2, p2 = reps()
    d = dense_score_matrix(q2, p2) / TAU
    s = sparse_score_matrix(q2, p2) / TAU
    c = colbert_score_matrix(q2, p2) / TAU
    e = d + 0.3 * s + c
    t = torch.softmax(e.detach() if detach else e, -1)
    tgt = torch.arange(2) * G
    ce_ = torch.nn.functional.cross_entropy
    base = (ce_(d, tgt) + ce_(e, tgt) + 0.1 * ce_(s, tgt) + ce_(c, tgt)) / 4

    def sce(m):
        return -(t * torch.log_softmax(m, -1)).sum(-1).mean()

    total = (base + (sce(d) + 0.1 * sce(s) + sce(c)) / 3) / 2
    assert total.item() == pytest.approx(out.loss.item(), rel=1e-12)
    total.backward()
    want = _grads(q2, p2)
    same = all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(got, want, strict=True))
    assert same is detach  # a teacher that is not detached gives different gradients


@pytest.mark.parametrize("clamp", [False, True])
def test_colbert_scores_in_query_blocks_equal_one_block(monkeypatch, clamp):
    import m3embed.train.losses as losses

    q, p = reps()
    whole = colbert_score_matrix(q, p, clamp=clamp)
    gw = torch.autograd.grad(whole.sum(), [q.colbert, p.colbert])
    monkeypatch.setattr(losses, "MAXSIM_BLOCK_ELEMENTS", 1)  # one query per block
    q2, p2 = reps()
    blocks = colbert_score_matrix(q2, p2, clamp=clamp)
    gb = torch.autograd.grad(blocks.sum(), [q2.colbert, p2.colbert])
    torch.testing.assert_close(blocks, whole, rtol=0, atol=1e-12)
    for a, b in zip(gw, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
