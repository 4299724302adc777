"""Training data: row validation (file:line errors), group sampling, seeded plans, buckets, collation."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest
from helpers import tokenizer_dir

from m3embed.tokenize import M3Tokenizer
from m3embed.train.data import (
    PAPER_BATCH_FINETUNE,
    DataError,
    TrainData,
    TrainDataset,
    bucket_of,
    memory_scale,
    paper_batch_sizes,
    read_rows,
)


@pytest.fixture(scope="module")
def tok():
    return M3Tokenizer.from_dir(tokenizer_dir())


def write(path, rows, gz=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def ds(tok, path, **kw):
    args = {"query_max_len": 16, "passage_max_len": 32, "group_size": 4} | kw
    return TrainDataset(path, tok, **args)


def row(i, pos=None, n_neg=5):
    return {"query": f"question {i}", "pos": [pos or f"answer passage {i}"],
            "neg": [f"other passage {i} {k}" for k in range(n_neg)]}


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("bad", "message"), [
    ({"query": "q", "neg": ["n"]}, "missing 'pos'"),
    ({"query": "q", "pos": []}, "'pos' is empty"),
    ({"query": "q", "pos": ["ok", "  "]}, r"pos\[1\] is an empty text"),
    ({"query": "", "pos": ["p"]}, "'query' is an empty text"),
    ({"pos": ["p"]}, "missing 'query'"),
    ({"query": "q", "pos": ["p"], "neg": ["n", 3]}, r"neg\[1\] is int"),
    ({"query": "q", "pos": "p", "neg": {"a": 1}}, "'neg' must be a list"),
    ('{"query": "q", "pos": ["p"]', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "d.jsonl", [row(0), "", bad])  # blank line 2 is skipped; the bad row is line 3
    with pytest.raises(DataError, match=message) as e:
        read_rows(path)
    assert f"{path}:3:" in str(e.value)


def test_not_a_jsonl_file(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("query,pos\nq,p\n")
    with pytest.raises(DataError, match=rf"{csv}:1: not valid JSON"):
        read_rows(csv)
    fake_gz = tmp_path / "d.jsonl.gz"
    fake_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=f"{fake_gz}: cannot read"):
        read_rows(fake_gz)
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DataError, match=f"{binary}: not UTF-8"):
        read_rows(binary)
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    empty = write(tmp_path / "e.jsonl", [""])
    with pytest.raises(DataError, match="no rows"):
        read_rows(empty)


def test_teacher_scores_validated(tmp_path):
    ok = dict(row(0), pos_scores=[1.0], neg_scores=[0.5] * 5)
    path = write(tmp_path / "d.jsonl", [ok, dict(row(1), pos_scores=[1.0], neg_scores=[0.1, 0.2])])
    with pytest.raises(DataError, match=r"d.jsonl:2: 'neg_scores' needs one number per text \(5\), got 2"):
        read_rows(path, need_scores=True)
    path = write(tmp_path / "e.jsonl", [row(0)])
    with pytest.raises(DataError, match=r"e\.jsonl:1: missing 'pos_scores'"):
        read_rows(path, need_scores=True)
    assert len(read_rows(path)) == 1  # scores are only required when distilling


def test_mixed_rows_without_negatives_is_an_error(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [row(0), row(1, n_neg=0)])
    with pytest.raises(DataError, match=r"d.jsonl:2: row has no 'neg' texts while other rows"):
        ds(tok, path)


def test_file_without_negatives_uses_group_size_one(tmp_path, tok, caplog):
    path = write(tmp_path / "pairs.jsonl.gz", [row(i, n_neg=0) for i in range(4)], gz=True)
    with caplog.at_level(logging.WARNING):
        d = ds(tok, path)
    assert d.group_size == 1
    assert "group size 1" in caplog.text


# ---------------------------------------------------------------------------- sampling
def test_group_sampling_with_and_without_replacement(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [row(0, n_neg=7), row(1, n_neg=2)])
    d = ds(tok, path, group_size=5)
    _, ps, scores = d.sample_group(0, np.random.default_rng(0))
    assert scores is None and len(ps) == 5 and ps[0] == d.examples[0].pos[0]
    assert len(set(ps[1:])) == 4  # enough negatives: drawn without replacement
    _, ps, _ = d.sample_group(1, np.random.default_rng(0))
    assert len(ps) == 5 and set(ps[1:]) == set(d.examples[1].neg)  # 2 negatives: each once, then repeats
    again = d.sample_group(1, np.random.default_rng(0))[1]
    assert again == ps  # seeded


def test_instruction_prefix_and_row_prompt(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [row(0), dict(row(1), prompt="Find: ")])
    d = ds(tok, path, query_instruction="Represent this: ")
    assert d.query_texts == ["Represent this: question 0", "Find: question 1"]
    d2 = ds(tok, path, query_instruction="A", query_instruction_format="<{}> {}")
    assert d2.query_texts[0] == "<A> question 0"


# ---------------------------------------------------------------------------- plans and batches
def shared_positive_rows(n=24):
    # rows 3k, 3k+1, 3k+2 share one positive (as in train_mix: questions on the same paragraph)
    return [row(i, pos=f"shared paragraph {i // 3}") for i in range(n)]


def test_no_two_rows_with_the_same_positive_in_a_batch(tmp_path, tok):
    d = ds(tok, write(tmp_path / "d.jsonl", shared_positive_rows()))
    data = TrainData([d], batch_sizes=4, seed=3)
    for epoch in range(3):
        plan = data.plan(epoch)
        assert len(plan) == 6
        for gb in plan:
            pos = [d.examples[i].pos[0] for i in gb.examples]
            assert len(pos) == len(set(pos))
        assert sorted(int(i) for gb in plan for i in gb.examples) == list(range(24))


def test_plan_is_seeded_and_ranks_split_each_global_batch(tmp_path, tok):
    d1 = ds(tok, write(tmp_path / "a.jsonl", [row(i) for i in range(16)]))
    d2 = ds(tok, write(tmp_path / "b.jsonl", [row(100 + i) for i in range(8)]))
    a = TrainData([d1, d2], batch_sizes=2, seed=7, world_size=2)
    b = TrainData([d1, d2], batch_sizes=2, seed=7, world_size=2)
    other = TrainData([d1, d2], batch_sizes=2, seed=8, world_size=2)
    pa, pb = a.plan(0), b.plan(0)
    assert [gb.examples.tolist() for gb in pa] == [gb.examples.tolist() for gb in pb]
    assert [gb.examples.tolist() for gb in pa] != [gb.examples.tolist() for gb in other.plan(0)]
    assert [gb.examples.tolist() for gb in pa] != [gb.examples.tolist() for gb in a.plan(1)]
    assert len(pa) == 6 and {gb.dataset for gb in pa} == {0, 1}
    for k, gb in enumerate(pa):
        r0, r1 = a.collate(0, k, rank=0), a.collate(0, k, rank=1)
        assert r0.dataset == r1.dataset == (d1.name if gb.dataset == 0 else d2.name)  # one dataset per batch
        assert r0.q_ids.shape[0] == r1.q_ids.shape[0] == 2
        assert not set(r0.lines) & set(r1.lines)
        again = b.collate(0, k, rank=1)  # same draw on a fresh object (resume / other process)
        assert again.p_ids.tolist() == r1.p_ids.tolist()


def test_collated_batch_layout(tmp_path, tok):
    d = ds(tok, write(tmp_path / "d.jsonl", [row(i) for i in range(6)]), group_size=3)
    data = TrainData([d], batch_sizes=3, seed=0, pad_id=tok.special.pad)
    b = data.collate(0, 0)
    assert b.q_ids.shape[0] == 3 and b.p_ids.shape[0] == 9 and b.group_size == 3
    assert b.p_mask.sum(1).min() > 0 and (b.q_ids[b.q_mask == 0] == tok.special.pad).all()
    for qi in range(3):
        line = b.lines[qi]
        pos_text = d.passage_texts[d.examples[line - 1].pos[0]]
        want = tok.tokenize([pos_text], max_length=32)[0]
        assert b.p_ids[qi * 3, : len(want)].tolist() == want  # the positive leads its group


def test_drop_last_and_partial_batches(tmp_path, tok):
    d = ds(tok, write(tmp_path / "d.jsonl", [row(i) for i in range(7)]))
    assert [len(gb.examples) for gb in TrainData([d], batch_sizes=3, seed=0).plan(0)] == [3, 3]
    sizes = sorted(len(gb.examples) for gb in TrainData([d], batch_sizes=3, seed=0, drop_last=False).plan(0))
    assert sizes == [1, 3, 3]
    sizes = sorted(len(gb.examples) for gb in TrainData([d], batch_sizes=2, seed=0, world_size=2,
                                                         drop_last=False).plan(0))
    assert sizes == [2, 4]  # every rank needs the same number of rows
    with pytest.raises(DataError, match="no complete batch"):
        TrainData([d], batch_sizes=8, seed=0).plan(0)


def test_length_buckets_and_batch_table(tmp_path, tok):
    assert bucket_of(np.array([1, 499, 500, 999, 1000, 2500, 6999, 7000, 9000])).tolist() == \
        [0, 0, 1, 1, 2, 3, 7, 8, 8]
    assert paper_batch_sizes(8, 1.0) == list(PAPER_BATCH_FINETUNE)
    assert paper_batch_sizes(1, 1.0)[0] == 700
    assert paper_batch_sizes(4, 0.5) == [48, 32, 20, 18, 14, 14, 12, 10, 8]  # 8/G · 0.5 = 1
    assert paper_batch_sizes(8, 0.01) == [1] * 9 and paper_batch_sizes(8, 1.0, cap=16)[0] == 16
    assert memory_scale(80, 24, 1024) == pytest.approx(1.0)
    assert memory_scale(8, 6, 384) == pytest.approx(0.1 * 24 * 1024 / (6 * 384))
    long_text = " ".join(["word"] * 700)
    rows = [row(i) for i in range(6)] + [dict(row(10 + i), pos=[long_text + f" {i}"]) for i in range(4)]
    d = TrainDataset(write(tmp_path / "d.jsonl", rows), tok, query_max_len=16, passage_max_len=1024, group_size=2)
    assert (d.lengths[:6] < 500).all() and (d.lengths[6:] >= 500).all()
    table = {0: [3, 2] + [1] * 7}
    plan = TrainData([d], batch_sizes=table, seed=0).plan(0)
    for gb in plan:
        short = all(d.lengths[i] < 500 for i in gb.examples)
        assert len(gb.examples) == (3 if short else 2)
        assert short or all(d.lengths[i] >= 500 for i in gb.examples)  # never mixed
