"""Parity acceptance test against FlagEmbedding 1.4.2's ``BGEM3FlagModel`` (golden files).

The golden data (``tests/golden/``) comes from ``scripts/make_golden.py``, run in a separate
environment with the reference installed; this module never imports FlagEmbedding. Each case is
one random checkpoint shape × one max length. Checked: token ids (exact), dense and ColBERT vectors
and lexical weights (1e-5), the lexical matching matrix and per-pair ``colbert_score``, and the
five ``compute_score`` outputs — ours at any batch size against the reference's exact batch-size-1
numbers, and ours with ``flag_parity=True`` against the reference's batched (padding-clamped) ones.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from m3embed import colbert_score, lexical_matching_score

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
ATOL = 1e-5
#: plus this relative slack: the reference accumulates lexical sums of up to ~40 in float32
RTOL = 1e-6
#: lexical keys whose weight is below this may be present on one side only (ReLU boundary)
LEX_KEY_SLACK = 1e-3
SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")
OUR_BATCH_SIZES = (1, 3, 256)

_META = json.loads((GOLDEN_DIR / "golden.json").read_text(encoding="utf-8"))
CASES = sorted(_META["cases"])
REF_BATCH_SIZES = _META["ref_batch_sizes"]
WEIGHT_SETS = {"default": None, "weighted": _META["weights"]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: intra-op threads only add overhead (25x on a loaded 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _case(golden: dict, parity_model, case: str):
    g = golden["cases"][case]
    return g, parity_model(g["shape"]), g["max_length"], f"{g['shape']}__{g['max_length']}"


def _max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b), initial=0.0))


def _assert_close(ours, ref, what: str) -> None:
    """``|ours - ref| <= ATOL + RTOL·|ref|`` elementwise (RTOL only matters for |ref| > 1)."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    excess = np.abs(ours - ref) - (ATOL + RTOL * np.abs(ref))
    assert np.all(excess <= 0), f"{what}: max abs deviation {_max_abs(ours, ref)}"


def _check_lexical(ours: dict, ref: dict, where: str) -> float:
    """Same keys (up to weights < LEX_KEY_SLACK), same first-occurrence order, values within ATOL."""
    for k in ours.keys() ^ ref.keys():
        w = ours.get(k, ref.get(k))
        assert w < LEX_KEY_SLACK, f"{where}: token id {k} (weight {w}) only on one side"
    common = [k for k in ref if k in ours]
    assert [k for k in ours if k in ref] == common, f"{where}: key order differs"
    dev = max((abs(float(ours[k]) - ref[k]) for k in common), default=0.0)
    assert dev <= ATOL, f"{where}: lexical weight deviates by {dev}"
    return dev


@cache
def _our_scores(model, pairs: tuple, max_len: int, bs: int, weights: tuple | None, flag_parity: bool) -> dict:
    return model.compute_score(list(pairs), batch_size=bs, max_query_length=max_len, max_passage_length=max_len,
                               weights_for_different_modes=None if weights is None else list(weights),
                               flag_parity=flag_parity)


def _scores(golden, model, max_len, bs, wname, flag_parity=False) -> dict:
    w = WEIGHT_SETS[wname]
    return _our_scores(model, tuple(golden["pairs"]), max_len, bs, None if w is None else tuple(w), flag_parity)


# ---------------------------------------------------------------------------- representations
@pytest.mark.parametrize("case", CASES)
def test_token_ids(parity_golden, parity_model, case):
    _, model, max_len, _ = _case(parity_golden, parity_model, case)
    ours = model.tokenizer.tokenize(parity_golden["texts"], max_length=max_len)
    assert ours == parity_golden["token_ids"][str(max_len)]


@pytest.mark.parametrize("batch_size", [256, 5])
@pytest.mark.parametrize("case", CASES)
def test_encode(parity_golden, parity_model, case, batch_size):
    g, model, max_len, key = _case(parity_golden, parity_model, case)
    arrays = parity_golden["arrays"]
    # the token cap keeps the 2048-token case to 8 texts per forward (34 x 2048 padded is slow on CPU)
    out = model.encode(parity_golden["texts"], max_length=max_len, batch_size=batch_size,
                       max_batch_tokens=8 * 2048, return_dense=True, return_sparse=True, return_colbert=True)

    assert _max_abs(out.dense_vecs, arrays[f"{key}__dense"]) <= ATOL

    offsets = arrays[f"{key}__colbert_offsets"]
    ref_colbert = arrays[f"{key}__colbert"]
    ours_colbert = out.colbert_vecs
    assert [len(c) for c in ours_colbert] == np.diff(offsets).tolist()
    for i, c in enumerate(ours_colbert):
        assert _max_abs(c, ref_colbert[offsets[i] : offsets[i + 1]]) <= ATOL, f"colbert of text {i}"

    ours_lex = out.lexical_weights
    assert len(ours_lex) == len(g["lexical_weights"])
    for i, (o, r) in enumerate(zip(ours_lex, g["lexical_weights"], strict=True)):
        assert all(isinstance(k, str) for k in o)
        _check_lexical(o, r, f"{case} text {i}")


@pytest.mark.parametrize("case", CASES)
def test_lexical_matching_and_colbert_score(parity_golden, parity_model, case):
    g, model, max_len, key = _case(parity_golden, parity_model, case)
    out = model.encode(parity_golden["texts"], max_length=max_len, batch_size=8, return_dense=False,
                       return_sparse=True)
    lw = out.lexical_weights
    _assert_close(lexical_matching_score(lw, lw), parity_golden["arrays"][f"{key}__lexical_matching"],
                  "lexical matching")

    pairs = parity_golden["pairs"]
    kw = {"max_length": max_len, "batch_size": 8, "return_dense": False, "return_colbert": True}
    q = model.encode([p[0] for p in pairs], **kw)
    p = model.encode([p[1] for p in pairs], **kw)
    ours = [colbert_score(a, b) for a, b in zip(q.colbert_vecs, p.colbert_vecs, strict=True)]
    _assert_close(ours, g["colbert_score"], "colbert_score")


# ---------------------------------------------------------------------------- compute_score
def _score_grid(batch_sizes, weighted_at):
    """(batch size, weights) combinations: default weights at every size, custom ones at one."""
    return [(bs, "default") for bs in batch_sizes] + [(weighted_at, "weighted")]


@pytest.mark.parametrize(("batch_size", "weights"), _score_grid(OUR_BATCH_SIZES, 3))
@pytest.mark.parametrize("case", CASES)
def test_compute_score_exact(parity_golden, parity_model, case, batch_size, weights):
    """Ours at any batch size == the reference at batch_size=1 (no padding enters the MaxSim)."""
    g, model, max_len, _ = _case(parity_golden, parity_model, case)
    ours = _scores(parity_golden, model, max_len, batch_size, weights)
    ref = g["scores"][f"{weights}/bs1"]
    for k in SCORE_KEYS:
        _assert_close(ours[k], ref[k], k)


@pytest.mark.parametrize(("batch_size", "weights"), _score_grid(REF_BATCH_SIZES, 4))
@pytest.mark.parametrize("case", CASES)
def test_compute_score_flag_parity(parity_golden, parity_model, case, batch_size, weights):
    """``flag_parity=True`` at batch size B == the reference at B, padding clamp included."""
    g, model, max_len, _ = _case(parity_golden, parity_model, case)
    ours = _scores(parity_golden, model, max_len, batch_size, weights, flag_parity=True)
    ref = g["scores"][f"{weights}/bs{batch_size}"]
    for k in SCORE_KEYS:
        _assert_close(ours[k], ref[k], k)


@pytest.mark.parametrize("case", CASES)
def test_batch_size_invariance_vs_reference_clamp(parity_golden, parity_model, case):
    """The deliberate difference: our scores do not depend on batch size; the reference's do."""
    g, model, max_len, _ = _case(parity_golden, parity_model, case)
    ref_exact = np.array(g["scores"]["default/bs1"]["colbert"])
    ours_by_bs = {bs: _scores(parity_golden, model, max_len, bs, "default") for bs in (*OUR_BATCH_SIZES, 4)}
    base = ours_by_bs[1]
    for bs, s in ours_by_bs.items():  # only fp32 padding-shape noise (~1e-6) between batch sizes
        for k in SCORE_KEYS:
            assert _max_abs(s[k], base[k]) <= ATOL, (bs, k)
    for bs in REF_BATCH_SIZES[1:]:
        ref_batched = np.array(g["scores"][f"default/bs{bs}"]["colbert"])
        gap = ref_batched - ref_exact
        assert gap.max() > 1e-3, f"reference at batch_size={bs} should show the padding clamp"
        assert gap.min() >= -ATOL, "the clamp can only raise a score"
        # ours matches the unclamped numbers, also on the pairs where the reference's are clamped
        changed = np.abs(gap) > 1e-3
        assert _max_abs(np.array(ours_by_bs[256]["colbert"])[changed], ref_exact[changed]) <= ATOL
