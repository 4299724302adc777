"""Scoring functions against hand computations."""

import numpy as np
import pytest
import torch

from m3embed import (
    colbert_score,
    dense_scores,
    lexical_matching_score,
    lexical_scores,
    maxsim,
    minmax_normalize,
    reciprocal_rank_fusion,
    weighted_sum,
    zscore_normalize,
)
from m3embed.output import LexicalWeights


def test_dense_scores_are_inner_products():
    q = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    p = np.array([[0.0, 1.0], [0.8, 0.6], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(dense_scores(q, p), [[0, 0.8, 1], [0.8, 0.96, 0.6]], atol=1e-7)


def test_lexical_matching_score_sums_shared_tokens():
    a = {"1": 0.5, "2": 0.25, "9": 3.0}
    b = {"2": 2.0, "3": 1.0, "1": 0.1}
    assert lexical_matching_score(a, b) == pytest.approx(0.5 * 0.1 + 0.25 * 2.0)
    assert lexical_matching_score(a, {}) == 0.0
    m = lexical_matching_score([a, b], [b, a, {}])
    assert m.shape == (2, 3)
    assert m[1, 0] == pytest.approx(4 + 1 + 0.01)
    with pytest.raises(ValueError, match="both be dicts"):
        lexical_matching_score(a, [b])


def test_lexical_scores_csr_equal_dict_scores():
    lw = LexicalWeights(np.array([0, 2, 3, 3]), np.array([5, 1, 5]), np.array([0.5, 2.0, 4.0], np.float32), 10)
    dicts = lw.to_dicts()
    assert dicts == [{"5": 0.5, "1": 2.0}, {"5": 4.0}, {}]
    got = lexical_scores(lw, lw)
    want = lexical_matching_score(dicts, dicts)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0, 1] == pytest.approx(2.0)


def test_colbert_score_by_hand():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.6, 0.8], [1.0, 0.0]])
    # row 1: max(0.6, 1.0) = 1.0; row 2: max(0.8, 0.0) = 0.8
    assert colbert_score(q, p) == pytest.approx(0.9)
    assert colbert_score(np.zeros((0, 2)), p) == 0.0


def _pad(mats):
    lmax = max(len(m) for m in mats)
    out = torch.zeros(len(mats), lmax, mats[0].shape[1])
    mask = torch.zeros(len(mats), lmax, dtype=torch.bool)
    for i, m in enumerate(mats):
        out[i, : len(m)] = torch.as_tensor(m, dtype=torch.float32)
        mask[i, : len(m)] = True
    return out, mask


def test_maxsim_matches_pairwise_and_clamp_reproduces_padding_defect():
    # query token 2 only has negative similarities with the short passage
    q1 = np.array([[1.0, 0.0], [-1.0, 0.0]])
    short = np.array([[0.8, 0.6]])
    long_ = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    q, qm = _pad([q1, q1])
    p, pm = _pad([short, long_])
    exact = maxsim(q, qm, p, pm, pairwise=True)
    np.testing.assert_allclose(exact.numpy(), [colbert_score(q1, short), colbert_score(q1, long_)], atol=1e-6)
    assert exact[0].item() == pytest.approx((0.8 - 0.8) / 2)
    clamped = maxsim(q, qm, p, pm, pairwise=True, clamp_padding=True)
    # the short passage is padded: its zero rows lift token 2's max from -0.8 to 0
    assert clamped[0].item() == pytest.approx((0.8 + 0.0) / 2)
    assert clamped[1].item() == pytest.approx(exact[1].item())
    full = maxsim(q, qm, p, pm)
    assert full.shape == (2, 2)
    np.testing.assert_allclose(full.diagonal().numpy(), exact.numpy(), atol=1e-6)


def test_maxsim_ignores_query_padding():
    q1 = np.array([[1.0, 0.0]])
    q2 = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    p1 = np.array([[0.6, 0.8], [1.0, 0.0]])
    q, qm = _pad([q1, q2])
    p, pm = _pad([p1])
    s = maxsim(q, qm, p, pm)
    assert s[0, 0].item() == pytest.approx(colbert_score(q1, p1))
    assert s[1, 0].item() == pytest.approx(colbert_score(q2, p1))


def test_reciprocal_rank_fusion_by_hand():
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "b"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(2 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    ranked = reciprocal_rank_fusion([["a", "b", "c"], ["c", "b"]], k=60)
    assert [d for d, _ in ranked] == ["c", "b", "a"]
    weighted = dict(reciprocal_rank_fusion([["a"], ["b"]], k=0, weights=[2.0, 1.0]))
    assert weighted == {"a": 2.0, "b": 1.0}
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


def test_normalisations():
    x = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(minmax_normalize(x), [[0, 0.5, 1], [0, 0, 0]])
    z = zscore_normalize(x)
    np.testing.assert_allclose(z[0], [-np.sqrt(1.5), 0, np.sqrt(1.5)])
    np.testing.assert_allclose(z[1], [0, 0, 0])


def test_weighted_sum_is_normalised_by_weights():
    s = {"dense": np.array([0.5, 1.0]), "sparse": np.array([0.2, 0.0]), "colbert": np.array([1.0, 1.0])}
    got = weighted_sum(s, {"dense": 1.0, "sparse": 0.3, "colbert": 1.0})
    np.testing.assert_allclose(got, [(0.5 + 0.06 + 1.0) / 2.3, 2.0 / 2.3])
    with pytest.raises(ValueError):
        weighted_sum(s, {"dense": 0.0})
