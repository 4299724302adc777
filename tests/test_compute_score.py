"""compute_score: shapes, containers and agreement with encode + the scoring functions."""

import numpy as np
import pytest
from helpers import tiny_checkpoint

from m3embed import M3Model, colbert_score, lexical_matching_score

KEYS = {"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return M3Model.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("cs"), colbert_dim=8, seed=11))


PAIRS = [
    ["what is the capital of france", "Paris is the capital and largest city of France."],
    ["what is the capital of france", "model"],
    ["北京是哪个国家的首都", "北京是中华人民共和国的首都。"],
    ["the cat", "the cat the cat the cat sat on the mat"],
]


def test_components_equal_encode_then_score(model):
    s = model.compute_score(PAIRS, weights_for_different_modes=[0.4, 0.2, 0.4])
    assert set(s) == KEYS and all(len(v) == len(PAIRS) for v in s.values())
    assert all(isinstance(x, float) for v in s.values() for x in v)
    for k, (q, p) in enumerate(PAIRS):
        eq = model.encode(q, return_sparse=True, return_colbert=True)
        ep = model.encode(p, return_sparse=True, return_colbert=True)
        assert s["dense"][k] == pytest.approx(float(eq.dense_vecs @ ep.dense_vecs), abs=1e-6)
        assert s["sparse"][k] == pytest.approx(lexical_matching_score(eq.lexical_weights, ep.lexical_weights), abs=1e-6)
        assert s["colbert"][k] == pytest.approx(colbert_score(eq.colbert_vecs, ep.colbert_vecs), abs=1e-6)
        d, sp, c = s["dense"][k], s["sparse"][k], s["colbert"][k]
        assert s["sparse+dense"][k] == pytest.approx((0.2 * sp + 0.4 * d) / 0.6)
        assert s["colbert+sparse+dense"][k] == pytest.approx((0.4 * c + 0.2 * sp + 0.4 * d) / 1.0)
    assert s["sparse"][3] > 0  # shared tokens do score


def test_batch_size_never_changes_scores(model):
    ref = model.compute_score(PAIRS, batch_size=1)
    for bs in (2, 3, 256):
        got = model.compute_score(PAIRS, batch_size=bs)
        for k in KEYS:
            np.testing.assert_allclose(got[k], ref[k], atol=1e-6)


def test_single_pair_empty_and_bad_input(model):
    one = model.compute_score(PAIRS[0])
    assert set(one) == KEYS and all(isinstance(v, float) for v in one.values())
    assert model.compute_score([]) == {k: [] for k in KEYS}
    with pytest.raises(TypeError, match="pair at index 1"):
        model.compute_score([PAIRS[0], ["only one"]])
    with pytest.raises(TypeError, match="pair at index 0: passage is NoneType"):
        model.compute_score([["q", None]])
    with pytest.raises(ValueError, match="3 values"):
        model.compute_score(PAIRS, weights_for_different_modes=[1, 1])


def test_convert_id_to_token(model):
    lw = model.encode(["Hello world, hello!"], return_dense=False, return_sparse=True).lexical_weights
    words = model.convert_id_to_token(lw)
    assert isinstance(words, dict)  # one-element list unwrapped, as the reference
    assert set(words) <= {"Hello", "world", ",", "hell", "o", "!", "hello"}
    assert model.convert_id_to_token({"35378": 0.5}) == {"Hello": 0.5}
    two = model.convert_id_to_token([{"35378": 1.0}, {"8999": 2.0}])
    assert two == [{"Hello": 1.0}, {"world": 2.0}]
