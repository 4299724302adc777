"""MultiVecStore: codecs (fp32/fp16/int8/residual), segment reads in any order, packed MaxSim."""

import numpy as np
import pytest

from m3embed.index.multivec import MultiVecStore, ResidualCodec, _ranges
from m3embed.output import ColbertVectors
from m3embed.scoring import colbert_score, maxsim_packed


def clustered(n_docs, dim, seed, per_doc=(3, 12)):
    """Unit token vectors drawn around 32 directions (as real ColBERT vectors cluster)."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((32, dim)).astype(np.float32)
    lens = rng.integers(*per_doc, n_docs)
    x = protos[rng.integers(0, 32, lens.sum())] + 0.35 * rng.standard_normal((lens.sum(), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return ColbertVectors(x, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))


def test_ranges():
    assert _ranges(np.array([5, 0, 9]), np.array([7, 0, 12])).tolist() == [5, 6, 9, 10, 11]
    assert _ranges(np.array([], np.int64), np.array([], np.int64)).tolist() == []


@pytest.mark.parametrize("codec,max_err", [("fp32", 0.0), ("fp16", 1e-3), ("int8", 1.5e-2), ("residual", 0.35)])
def test_codecs_roundtrip(codec, max_err):
    cv = clustered(40, 64, 0)
    store = MultiVecStore(64, {"codec": codec, "centroids": 32, "nbits": 2})
    store.attach(store.encode(cv, 0, 0))
    rows = np.array([39, 3, 0, 17])
    got = store.get(rows)
    for j, r in enumerate(rows):
        a, b = got.offsets[j], got.offsets[j + 1]
        assert b - a == len(cv[r])
        err = np.abs(got.data[a:b] - cv[r]).max()
        assert err <= max_err + 1e-7
    # payload bytes per vector (fp32: 64 dims = 256 bytes); scales, offsets and centroids are per store;
    # residual: 2 bits × 64 dims, the centroid id, the decoded vector's norm
    per_vec = sum(a.nbytes for s in store.segments for k, a in s.arrays.items() if k != "scale") / len(cv.data)
    assert per_vec == {"fp32": 256, "fp16": 128, "int8": 64, "residual": 16 + 2 + 4}[codec]


def test_residual_scores_track_fp32():
    cv = clustered(60, 128, 1)
    q = clustered(1, 128, 2, per_doc=(8, 9))[0]
    store = MultiVecStore(128, {"codec": "residual", "centroids": 32, "nbits": 4})
    store.attach(store.encode(cv, 0, 0))
    dec = store.get(np.arange(60))
    exact = np.array([colbert_score(q, cv[i]) for i in range(60)])
    approx = maxsim_packed(q, dec.data, dec.offsets)
    assert np.abs(exact - approx).max() < 0.05
    assert len(set(np.argsort(-exact)[:10]) & set(np.argsort(-approx)[:10])) >= 7


def test_segments_and_fit_once():
    a, b = clustered(10, 32, 3), clustered(7, 32, 4)
    store = MultiVecStore(32, {"codec": "residual", "centroids": 8})
    store.attach(store.encode(a, 0, 0))
    centroids = store.residual.centroids.copy()
    store.attach(store.encode(b, 10, 1))
    np.testing.assert_array_equal(store.residual.centroids, centroids)  # later segments reuse the codebook
    assert len(store) == 17
    got = store.get(np.array([12, 2]))
    assert got.offsets[1] == len(b[2]) and got.offsets[2] - got.offsets[1] == len(a[2])
    with pytest.raises(ValueError, match="starts at row"):
        store.attach(store.encode(b, 3, 2))


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "residual"])
def test_get_across_segments_any_order(codec):
    """Rows spread over several segments, sorted, shuffled or repeated: each row decodes to the same
    vectors as when read alone (the gathered one-pass decode and the per-segment path agree)."""
    parts = [clustered(n, 32, 10 + i) for i, n in enumerate((6, 1, 9, 4))]
    store = MultiVecStore(32, {"codec": codec, "centroids": 8, "nbits": 4})
    start = 0
    for i, cv in enumerate(parts):
        store.attach(store.encode(cv, start, i))
        start += len(cv)
    alone = [store.get(np.array([r])).data.copy() for r in range(start)]
    rng = np.random.default_rng(0)
    for rows in (np.arange(start), np.array([2, 7, 8, 15, 19]), rng.permutation(start), np.array([12, 3, 12, 0, 6])):
        got = store.get(rows, scratch=True)
        for j, r in enumerate(rows):
            np.testing.assert_array_equal(got.data[got.offsets[j] : got.offsets[j + 1]], alone[r])


def test_prepared_residual_similarities_equal_decoded():
    """Residual scoring from stored norms ((q·r + q·c) / |c + r|) equals MaxSim on fully decoded vectors;
    segments written without norms (older indexes) take the decoding path and give the same values."""
    cv = clustered(30, 64, 5)
    q = clustered(1, 64, 6, per_doc=(9, 10))[0]
    store = MultiVecStore(64, {"codec": "residual", "centroids": 16, "nbits": 2})
    store.attach(store.encode(cv, 0, 0))
    rows = np.array([4, 29, 0, 11])
    dec = store.get(rows)
    pv = store.prepare(rows)
    assert pv.codes is not None  # the fast path
    np.testing.assert_allclose(store.similarities(q, pv), q @ dec.data.T, rtol=0, atol=2e-6)
    del store.segments[0].arrays["norms"]
    old = store.prepare(rows)
    assert old.codes is None
    np.testing.assert_allclose(store.similarities(q, old), q @ dec.data.T, rtol=0, atol=1e-6)


def test_maxsim_packed_matches_colbert_score():
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal((n, 8)).astype(np.float32) for n in (3, 0, 5, 1)]
    q = rng.standard_normal((4, 8)).astype(np.float32)
    off = np.concatenate([[0], np.cumsum([len(p) for p in ps])])
    np.testing.assert_allclose(maxsim_packed(q, np.concatenate(ps), off), [colbert_score(q, p) for p in ps], rtol=1e-6)
    assert maxsim_packed(q[:0], np.concatenate(ps), off).tolist() == [0, 0, 0, 0]


def test_residual_codec_rejects_odd_bits():
    codec = ResidualCodec(np.eye(3, dtype=np.float32), np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="whole number of bytes"):
        codec.encode(np.eye(3, dtype=np.float32))


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_residual_decode_equals_unpacked_reference(nbits):
    cv = clustered(30, 64, 5)
    codec = ResidualCodec.fit(cv.data, k=8, nbits=nbits, niter=5, seed=0)
    enc = codec.encode(cv.data)
    per = 8 // nbits
    q = (enc["resid"][:, :, None].astype(int) >> (nbits * np.arange(per))) & ((1 << nbits) - 1)
    q = q.reshape(len(cv.data), 64)
    ref = codec.centroids[enc["codes"].astype(int)] + codec.weights[q]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(codec.decode(enc["codes"], enc["resid"]), ref, atol=1e-6)
    err = np.abs(codec.decode(enc["codes"], enc["resid"]) - cv.data).mean()
    assert err < {1: 0.2, 2: 0.1, 4: 0.03, 8: 0.005}[nbits]  # more bits, closer to the input
