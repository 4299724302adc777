"""encode(): ordering, batching, heads, MCLS, truncation, back-off and bad input."""

import logging

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint

from m3embed import M3Model
from m3embed.tokenize import MCLS_STRIDE

TEXTS = [
    "Hello world! ",
    "the the the cat cat sat",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "长城是中国古代的军事防御工程",
    "नमस्ते दुनिया",
    " ",
    "",
    "emoji 🎉🎉 party",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 6,
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("enc"), max_positions=1026, colbert_dim=16, seed=3)
    return M3Model.from_pretrained(path)


def _all(model, texts, **kw):
    return model.encode(texts, return_dense=True, return_sparse=True, return_colbert=True, **kw)


def test_shapes_and_invariants(model):
    out = _all(model, TEXTS, max_length=64)
    n = len(TEXTS)
    assert out.dense.shape == (n, model.hidden_size) and out.dense.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    lengths = out.n_tokens
    assert lengths.max() == 64 and lengths[6] == 2  # "" -> <s></s>
    assert [len(c) for c in out.colbert_vecs] == list(lengths - 1)  # every real token but [CLS]
    np.testing.assert_allclose(np.linalg.norm(out.colbert.data, axis=1), 1.0, atol=1e-5)
    assert out.colbert.data.shape[1] == 16
    unused = {str(t) for t in model.tokenizer.special.unused}
    for lw in out.lexical_weights:
        assert not (set(lw) & unused)
        assert all(w > 0 for w in lw.values())
    assert out.lexical_weights[6] == {}
    csr = out.sparse_csr()
    assert csr.shape == (n, model.tokenizer.vocab_size)
    for i, lw in enumerate(out.lexical_weights):
        row = csr.getrow(i)
        assert {str(k): v for k, v in zip(row.indices, row.data, strict=True)} == pytest.approx(lw)


def test_sparse_weights_equal_hand_computation(model):
    text = "the the the cat cat sat"
    ids = model.tokenizer.tokenize([text], max_length=64)[0]
    with torch.no_grad():
        t = torch.tensor([ids])
        h = model.hidden_states(t, torch.ones_like(t))
        w = torch.relu(h[0] @ model.sparse_linear.weight[0] + model.sparse_linear.bias[0])
    want: dict[str, float] = {}
    for tid, wi in zip(ids, w.tolist(), strict=True):
        if tid in model.tokenizer.special.unused or wi <= 0:
            continue
        want[str(tid)] = max(want.get(str(tid), 0.0), wi)  # repeated tokens: max, never sum
    got = model.encode(text, return_dense=False, return_sparse=True).lexical_weights
    assert list(got) == list(want)  # first-occurrence key order, as the reference
    assert got == pytest.approx(want, abs=1e-6)


def test_batch_size_and_order_do_not_change_results(model):
    ref = _all(model, TEXTS, batch_size=1, max_length=64)
    for kw in ({"batch_size": 3}, {"batch_size": 256}, {"batch_size": 256, "max_batch_tokens": 100}):
        out = _all(model, TEXTS, max_length=64, **kw)
        np.testing.assert_allclose(out.dense, ref.dense, atol=1e-6)
        np.testing.assert_allclose(out.colbert.data, ref.colbert.data, atol=1e-6)
        assert [set(d) for d in out.lexical_weights] == [set(d) for d in ref.lexical_weights]
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = _all(model, [TEXTS[i] for i in perm], batch_size=4, max_length=64)
    np.testing.assert_allclose(shuffled.dense, ref.dense[perm], atol=1e-6)
    for j, i in enumerate(perm):
        np.testing.assert_allclose(shuffled.colbert[j], ref.colbert[i], atol=1e-6)


def test_single_string_unwraps_and_empty_list_has_shapes(model):
    one = _all(model, "hello there")
    assert one.dense_vecs.shape == (model.hidden_size,)
    assert isinstance(one.lexical_weights, dict)
    assert one.colbert_vecs.ndim == 2
    empty = _all(model, [])
    assert empty.dense.shape == (0, model.hidden_size)
    assert empty.lexical_weights == [] and empty.colbert_vecs == []
    assert empty.sparse_csr().shape == (0, model.tokenizer.vocab_size)
    assert empty.colbert.data.shape == (0, model.colbert_dim)


@pytest.mark.parametrize(
    ("bad", "index", "kind"), [([None], 0, "NoneType"), (["ok", b"bytes"], 1, "bytes"), (["a", "b", 3], 2, "int")]
)
def test_bad_items_name_their_index(model, bad, index, kind):
    with pytest.raises(TypeError, match=rf"index {index} is {kind}"):
        model.encode(bad)


def test_bytes_input_is_rejected(model):
    with pytest.raises(TypeError, match="bytes"):
        model.encode(b"raw")


def test_truncation_policy(model, caplog):
    long_text = "word " * 200
    with caplog.at_level(logging.INFO, logger="m3embed.tokenize"):
        out = model.encode([long_text, "short"], max_length=64)
    assert "truncated 1 of 2 texts" in caplog.text
    assert out.n_tokens.tolist()[0] == 64
    ids = model.tokenizer.tokenize([long_text], max_length=64)[0]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 64
    with pytest.raises(ValueError, match="index 1 has"):
        model.encode(["short", long_text], max_length=64, truncation=False)
    with pytest.raises(ValueError, match="position limit of 1024"):
        model.encode(["x"], max_length=2048)


def test_mcls_dense_is_mean_of_cls_states(model):
    text = "alpha beta gamma delta " * 150  # > 512 tokens
    ids = model.tokenizer.tokenize([text], max_length=1024, mcls=True)[0]
    cls_pos = [i for i, t in enumerate(ids) if t == 0]
    assert cls_pos[:3] == [0, MCLS_STRIDE, 2 * MCLS_STRIDE] and ids[-1] == 2
    plain = model.tokenizer.tokenize([text], max_length=1024)[0]
    assert [t for t in ids if t != 0] == plain[1:]  # same text tokens, nothing dropped
    with torch.no_grad():
        t = torch.tensor([ids])
        h = model.hidden_states(t, torch.ones_like(t))[0]
        want = torch.nn.functional.normalize(h[cls_pos].mean(0), dim=-1).numpy()
    out = model.encode(text, max_length=1024, mcls=True, return_colbert=True)
    np.testing.assert_allclose(out.dense_vecs, want, atol=1e-5)
    assert len(out.colbert_vecs) == len(ids) - len(cls_pos)  # inserted [CLS] get no ColBERT vector
    short = model.encode(["tiny text"], mcls=True).dense
    np.testing.assert_allclose(short, model.encode(["tiny text"]).dense, atol=1e-6)


def test_mcls_truncation_counts_inserted_tokens(model):
    ids = model.tokenizer.tokenize(["tok " * 2000], max_length=600, mcls=True)[0]
    assert len(ids) == 600 and ids[-1] == 2
    assert [i for i, t in enumerate(ids) if t == 0] == [0, 256, 512]


def test_oom_backoff_splits_batches(model, monkeypatch, caplog):
    ref = model.encode(TEXTS, batch_size=1, return_sparse=True)
    real = model.hidden_states

    def flaky(input_ids, attention_mask):
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(input_ids, attention_mask)

    monkeypatch.setattr(model, "hidden_states", flaky)
    with caplog.at_level(logging.WARNING):
        out = model.encode(TEXTS, batch_size=8, return_sparse=True)
    assert "out of memory" in caplog.text
    np.testing.assert_allclose(out.dense, ref.dense, atol=1e-6)
    for a, b in zip(out.lexical_weights, ref.lexical_weights, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_other_runtime_errors_surface(model, monkeypatch):
    def broken(input_ids, attention_mask):
        raise RuntimeError("shape mismatch somewhere")

    monkeypatch.setattr(model, "hidden_states", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        model.encode(["a", "b"])
