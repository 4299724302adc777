"""M3Index bad input: clear errors and an index left unchanged."""

import json

import pytest
from helpers import tiny_checkpoint

from m3embed import M3Model
from m3embed.index import M3Index, ModelMismatchError

CORPUS = [{"id": f"d{i}", "text": t} for i, t in enumerate(
    ["red apples", "green pears", "blue sky over the sea", "a yellow submarine", "black coffee", "white snow"])]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return M3Model.from_pretrained(tiny_checkpoint(tmp_path_factory.mktemp("m"), colbert_dim=8, seed=3))


@pytest.fixture
def index(model, tmp_path):
    idx = M3Index.build(CORPUS, model, tmp_path / "idx", show_progress=False)
    yield idx
    idx.close()


def test_empty_and_special_only_queries(index):
    for bad in ["", "   \n"]:
        with pytest.raises(ValueError, match="query 1 is empty"):
            index.search(["apples", bad], k=3)
    with pytest.raises(ValueError, match=r"query 0 .* only special tokens"):
        index.search(["<s></s><pad>"], k=3)
    with pytest.raises(TypeError, match="query 1 is int"):
        index.search(["apples", 3], k=3)
    assert index.search([], k=3) == []


def test_k_values(index):
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(["apples"], k=k)
    for mode in ("dense", "multivec", "dense+sparse", "all", "rrf"):
        hits = index.search(["apples"], k=100, mode=mode)[0]
        assert len(hits) == len(CORPUS) and len({h.id for h in hits}) == len(CORPUS)
    # sparse returns only documents sharing a token with the query
    assert 1 <= len(index.search(["red apples"], k=100, mode="sparse")[0]) <= len(CORPUS)
    with pytest.raises(ValueError, match="mode 'fancy'"):
        index.search(["apples"], mode="fancy")
    with pytest.raises(ValueError, match="dense_depth"):
        index.search(["apples"], mode="all", dense_depth=-3)


def test_sparse_query_without_weights(index, model):
    q = model.encode(["apples"], return_dense=True, return_sparse=True, return_colbert=True)
    q.lexical.indptr[:] = 0  # as if every token had weight 0
    q.lexical.ids, q.lexical.weights = q.lexical.ids[:0], q.lexical.weights[:0]
    assert index.search(q, mode="sparse") == [[]]  # no weights, no lexical match: an empty list, not an error
    assert len(index.search(q, k=2, mode="all")[0]) == 2  # hybrids still rank by the other scores


def test_delete_unknown_id_changes_nothing(index):
    with pytest.raises(KeyError, match="nope"):
        index.delete(["d1", "nope"])
    assert len(index) == len(CORPUS) and "d1" in index
    index.delete("d1")
    with pytest.raises(KeyError, match="d1"):
        index.delete(["d1"])  # already deleted


def test_duplicate_ids(index, model):
    enc = model.encode(["x", "y"], return_dense=True, return_sparse=True, return_colbert=True)
    with pytest.raises(ValueError, match="duplicate id 'n1' at index 1"):
        index.add(["n1", "n1"], enc)
    with pytest.raises(ValueError, match=r"'d2' .* already in the index"):
        index.add(["n1", "d2"], enc)
    assert len(index) == len(CORPUS) and "n1" not in index
    with pytest.raises(ValueError, match="duplicate id 'd0'"):
        M3Index.build([*CORPUS, {"id": "d0", "text": "again"}], model, None, show_progress=False)
    with pytest.raises(ValueError, match="2 ids but 1 encoded"):
        index.add(["a", "b"], model.encode(["x"], return_dense=True, return_sparse=True, return_colbert=True))
    with pytest.raises(ValueError, match="return_colbert"):
        index.add(["a"], model.encode(["x"], return_dense=True, return_sparse=True))


def test_mismatched_model(index, tmp_path):
    same_shape = M3Model.from_pretrained(tiny_checkpoint(tmp_path / "o", colbert_dim=8, seed=2))
    with pytest.raises(ModelMismatchError, match="not the model the index was built with"):
        index.search(["apples"], model=same_shape)
    assert index.search(["apples"], k=2, model=same_shape, check_model=False)[0]
    other_dim = M3Model.from_pretrained(tiny_checkpoint(tmp_path / "p", hidden=16, heads=2, colbert_dim=8, seed=2))
    with pytest.raises(ModelMismatchError, match="hidden_size=16"):
        index.search(["apples"], model=other_dim, check_model=False)
    enc = other_dim.encode(["x"], return_dense=True, return_sparse=True, return_colbert=True)
    with pytest.raises(ModelMismatchError, match="16"):
        index.add(["x"], enc)
    with pytest.raises(ModelMismatchError):
        index.search(enc, mode="dense")


def test_reopened_index_loads_its_model_from_the_manifest(index, model):
    ref = [h.id for h in index.search(["blue sea"], k=3)[0]]
    index.close()
    ro = M3Index.open(index.root)
    assert ro.fingerprint["name"] == model.source
    assert [h.id for h in ro.search(["blue sea"], k=3)[0]] == ref


def test_bad_corpus_records(model, tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"_id": "a", "title": "T", "text": "x"}) + "\n\n" + '{"_id": "b"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:3: 'text' is missing"):
        M3Index.build(f, model, tmp_path / "bad", show_progress=False)
    assert not (tmp_path / "bad" / "manifest.json").exists()
    f.write_text(json.dumps({"_id": "a", "title": "T", "text": "x"}) + "\n" + '{"_id": "b", "text": "y"}\n')
    idx = M3Index.build(f, model, tmp_path / "good", show_progress=False)
    hit = next(h for h in idx.search(["x"], k=2, mode="dense")[0] if h.id == "a")
    assert hit.text == "T x" and hit.metadata == {"title": "T"}  # BEIR: title + " " + text
    with pytest.raises(ValueError, match="corpus record 1: no '_id' or 'id'"):
        M3Index.build([{"id": "a", "text": "x"}, {"text": "y"}], model, None, show_progress=False)
    with pytest.raises(ValueError, match="unknown index options"):
        M3Index.build(CORPUS, model, None, show_progress=False, colour="red")
    with pytest.raises(ValueError, match="multivec codec"):
        M3Index.build(CORPUS, model, None, show_progress=False, multivec="fp8")
