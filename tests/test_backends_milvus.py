"""Milvus backend (pymilvus + Milvus Lite): every mode equals M3Index, CRUD, ids, errors."""

from __future__ import annotations

import socket
import time

import pytest
from backends_common import (
    Encoded,
    check_ids,
    check_interrupted_ingest,
    check_mismatch_errors,
    check_modes_match_index,
    check_small_depths,
    check_upsert_delete_reopen,
    fill,
)
from helpers import tiny_checkpoint

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from m3embed import M3Model
from m3embed.backends import BackendUnavailableError, open_store


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("mv"), max_positions=1026, colbert_dim=16, seed=3)
    return Encoded(M3Model.from_pretrained(path), tmp_path_factory)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return M3Model.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("mv2"), max_positions=1026,
                                                   colbert_dim=16, seed=4))


def factory(path, collection, model, **kw):
    kw.setdefault("colbert_dtype", "float32")
    return open_store("milvus", uri=str(path / "milvus.db"), collection=collection, model=model, **kw)


@pytest.fixture(scope="module")
def store(enc, tmp_path_factory):
    s = factory(tmp_path_factory.mktemp("ms"), "main", enc.model)
    fill(s, enc)
    yield s
    s.close()


def test_every_mode_matches_m3index(store, enc):
    assert store.count() == len(enc.ids)
    check_modes_match_index(store, enc)


def test_depths_and_weights_match_m3index(store, enc):
    # Milvus's hybrid_search + WeightedRanker counts a document missing from one list as 0 there
    check_small_depths(store, enc, exact_engine_modes=())


def test_float16_on_milvus_lite_is_a_clear_error(enc, tmp_path):
    # Milvus Lite 3.2 has no FLOAT16_VECTOR (servers do): creating fails whole, naming the type
    from m3embed.backends import BackendError

    with pytest.raises(BackendError, match="Float16Vector"):
        factory(tmp_path, "half", enc.model, colbert_dtype="float16")
    s = factory(tmp_path, "other", enc.model)
    assert not s.client.has_collection("half")  # the token collection is created first: no half-made store
    s.close()


def test_upsert_delete_reopen(enc, tmp_path):
    check_upsert_delete_reopen(factory, tmp_path, enc)


def test_model_and_dimension_mismatch(enc, other_model, tmp_path):
    check_mismatch_errors(factory, tmp_path, enc, other_model)


def test_id_mapping(enc, tmp_path):
    check_ids(factory, tmp_path, enc)


def test_interrupted_ingest_rerun(enc, tmp_path):
    check_interrupted_ingest(factory, tmp_path, enc)


def test_unreachable_server_fails_fast():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = time.perf_counter()
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        open_store("milvus", uri=f"http://127.0.0.1:{port}", collection="x", timeout=2,
                   model={"hidden_size": 4, "colbert_dim": 4, "vocab_size": 10})
    assert time.perf_counter() - t < 10


def test_foreign_collection_is_refused(enc, tmp_path):
    s = factory(tmp_path, "mine", enc.model)
    s.client.create_collection("foreign", dimension=4)
    s.close()
    with pytest.raises(Exception, match="not created by m3embed"):
        factory(tmp_path, "foreign", enc.model)
