"""The local backend (M3Index behind the VectorStore interface) and the shared helpers."""

from __future__ import annotations

import pytest
from backends_common import (
    Encoded,
    check_ids,
    check_interrupted_ingest,
    check_mismatch_errors,
    check_modes_match_index,
    check_upsert_delete_reopen,
    fill,
)
from helpers import tiny_checkpoint

from m3embed import M3Model
from m3embed.backends import VectorStore, from_index, open_store
from m3embed.backends.base import chunk_point_id, point_id


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("lc"), max_positions=1026, colbert_dim=16, seed=3)
    return Encoded(M3Model.from_pretrained(path), tmp_path_factory)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    return M3Model.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("lc2"), max_positions=1026,
                                                   colbert_dim=16, seed=4))


def factory(path, collection, model, **kw):
    return open_store("local", path=path / collection, model=model, multivec="fp32", **kw)


def test_every_mode_matches_m3index(enc, tmp_path):
    s = factory(tmp_path, "main", enc.model)
    assert isinstance(s, VectorStore)
    fill(s, enc)
    check_modes_match_index(s, enc)
    s.close()


def test_from_index_copies_vectors(enc, tmp_path):
    s = open_store("local", path=tmp_path / "copy", model=enc.model, multivec="fp32")
    assert from_index(enc.index, s) == len(enc.ids)
    check_modes_match_index(s, enc, fusions=("auto",))
    s.close()


def test_upsert_delete_reopen(enc, tmp_path):
    check_upsert_delete_reopen(factory, tmp_path, enc)


def test_model_and_dimension_mismatch(enc, other_model, tmp_path):
    check_mismatch_errors(factory, tmp_path, enc, other_model)


def test_id_mapping(enc, tmp_path):
    check_ids(factory, tmp_path, enc)


def test_interrupted_ingest_rerun(enc, tmp_path):
    check_interrupted_ingest(factory, tmp_path, enc)


def test_point_ids_are_stable_uuids():
    assert point_id("d1") == point_id("d1") != point_id("d2")
    assert len(point_id("x" * 1000)) == 36
    assert chunk_point_id("d1", 1) not in (point_id("d1"), chunk_point_id("d1", 2), chunk_point_id("d2", 1))
    # pinned: stored collections depend on these values
    assert point_id("d1") == "462be37f-6127-5f6c-a535-1677d99654ae"
    assert chunk_point_id("d1", 1) == "0895f599-1810-5f17-b49c-29b5a783ea84"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        open_store("faiss")
