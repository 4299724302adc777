"""BEIR / MIRACL loaders and TREC runs: contents, split selection, and file:line errors."""

import gzip
import json

import pytest
from beir_toy import DOCS, write_beir
from helpers import shared_dir

from m3embed.eval.datasets import (
    load_beir,
    load_beir_qrels,
    load_corpus,
    load_miracl,
    load_topics,
    load_trec_qrels,
    read_trec_run,
    write_trec_run,
)


def test_beir_split_selects_queries_and_joins_title(tmp_path):
    ds = load_beir(write_beir(tmp_path / "toy"), "test")
    assert ds.split == "test" and len(ds.corpus) == len(DOCS)
    assert ds.query_ids == ["q1", "q2", "q3", "q4", "q6"]  # q5 is a dev query; queries-file order
    assert ds.qrels["q6"] == {"d4": 1, "d1": 1}
    assert ds.query_lang == {"q1": "en", "q2": "en", "q3": "de", "q4": "ja", "q6": "de"}
    assert ds.languages == ["de", "en", "ja"]
    by_id = {d.id: d for d in ds.corpus}
    assert by_id["d1"].full_text == "Cats The cat sleeps on the warm mat all afternoon."
    assert by_id["d2"].full_text == "Dogs bark at the postman every single morning."  # empty title: text only
    assert by_id["d6"].as_index_record() == {"id": "d6", "text": "東京 東京は日本の首都であり、最大の都市です。",
                                             "metadata": {"lang": "ja"}}
    assert ds.stats() == {"docs": 8, "queries": 5, "qrels": 6, "relevant": 6, "dropped_queries": 0, "missing_docs": 0}
    dev = load_beir(tmp_path / "toy", "dev")
    assert dev.query_ids == ["q5"] and dev.qrels == {"q5": {"d8": 1}}


def test_real_shared_layout_loads():
    root = shared_dir() / "data" / "xquad_r"
    if not root.is_dir():
        pytest.skip(f"{root} not found (set M3EMBED_SHARED)")
    ds = load_beir(shared_dir() / "data" / "xquad_r" / "paragraph" / "all_languages", "test_all_languages")
    assert ds.name == "xquad_r/paragraph/all_languages"
    assert len(ds.corpus) == 2640 and len(ds.queries) == 13090
    assert all(len(v) == 11 for v in ds.qrels.values())
    assert len(ds.languages) == 11


def test_unknown_split_lists_available(tmp_path):
    write_beir(tmp_path / "toy")
    with pytest.raises(FileNotFoundError, match=r"split 'valid' \(available: dev, test\)"):
        load_beir(tmp_path / "toy", "valid")


def test_queries_without_a_relevant_doc_are_dropped(tmp_path):
    write_beir(tmp_path / "toy", splits={"test": [("q1", "d1", 1), ("q2", "d3", 0), ("q3", "d99", 1)]})
    ds = load_beir(tmp_path / "toy", "test")
    assert ds.query_ids == ["q1", "q3"]
    assert ds.dropped_queries == 1 and ds.missing_docs == 1  # d99 is kept as relevant (lowers recall)


@pytest.mark.parametrize(
    ("file", "line", "content", "message"),
    [
        ("corpus.jsonl", 3, '{"_id": "x", "text": "a"\n', "not valid JSON"),
        ("corpus.jsonl", 3, '{"title": "t", "text": "a"}\n', "missing field '_id'"),
        ("corpus.jsonl", 3, '{"_id": "d1", "text": "again"}\n', "duplicate document id 'd1' (first at"),
        ("corpus.jsonl", 3, '{"_id": "x", "text": 5}\n', "field 'text' is int, expected a string"),
        ("corpus.jsonl", 3, '["_id", "x"]\n', "expected a JSON object, got list"),
        ("queries.jsonl", 3, '{"_id": "qx"}\n', "missing field 'text'"),
        ("queries.jsonl", 3, '{"_id": "q1", "text": "dup"}\n', "duplicate query id 'q1'"),
        ("qrels/test.tsv", 3, "q1\td1\n", "expected 3 tab-separated columns"),
        ("qrels/test.tsv", 3, "q1\td1\tyes\n", "relevance 'yes' is not a number"),
        ("qrels/test.tsv", 3, "q1\td1\t0.5\n", "not an integer grade"),
        ("qrels/test.tsv", 3, "q1\td1\t2\n", "listed twice with different grades"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, file, line, content, message):
    root = write_beir(tmp_path / "toy")
    path = root / file
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(line - 1, content)
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path.name}:{line}: .*") as e:
        load_beir(root, "test")
    assert message in str(e.value) and f"{path}:{line}:" in str(e.value)


def test_bad_utf8_and_unknown_qrels_query(tmp_path):
    root = write_beir(tmp_path / "toy")
    with open(root / "queries.jsonl", "ab") as f:
        f.write(b'{"_id": "qz", "text": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"queries.jsonl:7: not valid UTF-8"):
        load_beir(root, "test")
    root = write_beir(tmp_path / "toy2", splits={"test": [("q1", "d1", 1), ("nope", "d1", 1)]})
    with pytest.raises(ValueError, match=r"test.tsv: 1 query id\(s\) not in the queries file, e.g. 'nope'"):
        load_beir(root, "test")


def test_gz_corpus_and_numeric_ids(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"docid": 123, "title": "T", "text": "body"}) + "\n\n")
    (doc,) = load_corpus(path)
    assert (doc.id, doc.full_text, doc.lang) == ("123", "T body", None)


def test_miracl_topics_trec_qrels(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "docs-0.jsonl").write_text(
        json.dumps({"docid": "1#0", "title": "A", "text": "alpha"}) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "corpus" / "docs-1.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"docid": "2#0", "title": "B", "text": "beta"}) + "\n")
    (tmp_path / "topics.tsv").write_text("10\tfirst question\n11\tsecond one\n", encoding="utf-8")
    (tmp_path / "qrels.txt").write_text("10 Q0 1#0 1\n10 Q0 2#0 0\n11 Q0 2#0 1\n", encoding="utf-8")
    ds = load_miracl(tmp_path / "corpus", tmp_path / "topics.tsv", tmp_path / "qrels.txt", lang="sw")
    assert [d.id for d in ds.corpus] == ["1#0", "2#0"]
    assert ds.queries == {"10": "first question", "11": "second one"}
    assert ds.qrels == {"10": {"1#0": 1, "2#0": 0}, "11": {"2#0": 1}}
    assert ds.query_lang == {"10": "sw", "11": "sw"}

    (tmp_path / "bad_topics.tsv").write_text("10\tok\n11 no tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_topics.tsv:2: expected 'qid<TAB>query'"):
        load_topics(tmp_path / "bad_topics.tsv")
    (tmp_path / "bad_qrels.txt").write_text("10 Q0 1#0 1\n\n10 1#0 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_qrels.txt:3: expected 4 columns 'qid Q0 docid rel', got 3"):
        load_trec_qrels(tmp_path / "bad_qrels.txt")


def test_beir_qrels_without_header(tmp_path):
    (tmp_path / "q.tsv").write_text("q1\td1\t1\nq1\td2\t2\n", encoding="utf-8")
    assert load_beir_qrels(tmp_path / "q.tsv") == {"q1": {"d1": 1, "d2": 2}}


def test_trec_run_roundtrip_and_errors(tmp_path):
    run = {"q1": [("d3", 2.5), ("d1", 1.25)], "q2": [("d2", -0.5)]}
    write_trec_run(tmp_path / "r.trec", run, tag="sys")
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines == ["q1 Q0 d3 1 2.500000 sys", "q1 Q0 d1 2 1.250000 sys", "q2 Q0 d2 1 -0.500000 sys"]
    assert read_trec_run(tmp_path / "r.trec") == {"q1": {"d3": 2.5, "d1": 1.25}, "q2": {"d2": -0.5}}
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(tmp_path / "x.trec", {"q 1": [("d", 1.0)]})
    assert not (tmp_path / "x.trec").exists()  # atomic: a failed write leaves nothing
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 high sys\n")
    with pytest.raises(ValueError, match=r"bad.trec:1: score 'high' is not a number"):
        read_trec_run(tmp_path / "bad.trec")
