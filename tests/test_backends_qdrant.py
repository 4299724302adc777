"""Qdrant backend (qdrant-client local mode): every mode equals M3Index, CRUD, ids, long ColBERT matrices."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from backends_common import (
    Encoded,
    assert_same_hits,
    check_ids,
    check_interrupted_ingest,
    check_mismatch_errors,
    check_modes_match_index,
    check_small_depths,
    check_upsert_delete_reopen,
    fill,
)
from helpers import tiny_checkpoint

pytest.importorskip("qdrant_client")

from m3embed import M3Model
from m3embed.backends import BackendUnavailableError, open_store

DIM = 16
CAP = 24 * DIM  # 24 token vectors per point: the long document is split into several chunks


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("qd"), max_positions=1026, colbert_dim=DIM, seed=3)
    return Encoded(M3Model.from_pretrained(path), tmp_path_factory)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return M3Model.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("qd2"), max_positions=1026,
                                                   colbert_dim=DIM, seed=4))


def factory(path, collection, model, **kw):
    return open_store("qdrant", path=str(path / "qdrant"), collection=collection, model=model, **kw)


@pytest.fixture(scope="module")
def store(enc, tmp_path_factory):
    s = factory(tmp_path_factory.mktemp("qs"), "main", enc.model)
    fill(s, enc)
    yield s
    s.close()


def test_every_mode_matches_m3index(store, enc):
    assert store.count() == len(enc.ids)
    check_modes_match_index(store, enc)


def test_depths_and_weights_match_m3index(store, enc):
    check_small_depths(store, enc)


def test_long_colbert_matrix_is_chunked_not_truncated(enc, tmp_path):
    long_row = enc.ids.index("long")
    n_rows = len(enc.docs.colbert[long_row])
    assert n_rows > 3 * (CAP // DIM)
    s = factory(tmp_path, "capped", enc.model, max_multivector_floats=CAP)
    fill(s, enc)
    assert s.count() == len(enc.ids)  # chunks live in the side collection: not counted
    pts = s.client.scroll(s.chunks, limit=1000, with_payload=True)[0]
    chunks = [p for p in pts if p.payload.get("doc_id") == "long"]
    assert len(chunks) == -(-n_rows // (CAP // DIM)) - 1
    q_long = s.search([enc.texts[long_row][:200]], k=3, mode="multivec")  # text query: encoded by the store's model
    assert q_long[0][0].id == "long"
    for mode in ("multivec", "all", "rrf"):
        ref = enc.index.search(enc.queries, k=7, mode=mode)
        for fusion in ("client", "auto"):
            assert_same_hits(s.search(enc.queries, k=7, mode=mode, fusion=fusion), ref)
    # the long document's own ColBERT score is its full-matrix MaxSim (the first chunk alone scores less)
    from m3embed.scoring import colbert_score

    qi = 5
    comp = s._exact(enc.queries, qi, ["long"], ("colbert",))["colbert"][0]
    full = colbert_score(enc.queries.colbert[qi], enc.docs.colbert[long_row])
    first = colbert_score(enc.queries.colbert[qi], enc.docs.colbert[long_row][: CAP // DIM])
    assert comp == pytest.approx(full, abs=1e-5) and first < full - 1e-4
    # re-adding it shorter drops its stale chunks; deleting it drops the rest
    s.add(["long"], _rows(enc, [0]))
    assert not [p for p in s.client.scroll(s.chunks, limit=1000)[0] if (p.payload or {}).get("doc_id") == "long"]
    s.add(["long"], _rows(enc, [long_row]))
    s.delete(["long"])
    assert not [p for p in s.client.scroll(s.chunks, limit=1000)[0] if (p.payload or {}).get("doc_id") == "long"]
    s.close()


def _rows(enc, rows):
    from m3embed.backends.base import take_rows

    return take_rows(enc.docs, rows)


def test_upsert_delete_reopen(enc, tmp_path):
    check_upsert_delete_reopen(factory, tmp_path, enc)


def test_model_and_dimension_mismatch(enc, other_model, tmp_path):
    check_mismatch_errors(factory, tmp_path, enc, other_model)


def test_id_mapping(enc, tmp_path):
    check_ids(factory, tmp_path, enc)


def test_interrupted_ingest_rerun(enc, tmp_path):
    check_interrupted_ingest(factory, tmp_path, enc)


def test_in_memory_and_no_colbert(enc):
    s = open_store("qdrant", location=":memory:", collection="plain", model=enc.model, colbert=False)
    fill(s, enc)
    ref = enc.index.search(enc.queries, k=5, mode="dense+sparse")
    assert_same_hits(s.search(enc.queries, k=5, mode="dense+sparse"), ref)
    with pytest.raises(ValueError, match="colbert=False"):
        s.search(enc.queries, k=5, mode="all")
    s.close()


def test_unreachable_server_fails_fast():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = time.perf_counter()
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        open_store("qdrant", url=f"http://127.0.0.1:{port}", collection="x", model={"hidden_size": 4,
                   "colbert_dim": 4, "vocab_size": 10}, timeout=2)
    assert time.perf_counter() - t < 10


def test_opening_a_missing_collection_without_model(tmp_path):
    with pytest.raises(ValueError, match="model="):
        open_store("qdrant", path=str(tmp_path / "q"), collection="nothing")
    np.testing.assert_equal(1, 1)
