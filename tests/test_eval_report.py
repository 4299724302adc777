"""Report files: markdown table, JSON contents, and a real PNG."""

import json
import struct

import matplotlib.image
import pytest

from m3embed.eval import EvalResults, MetricResult, SystemResult, render_markdown, write_reports


def _system(key, base):
    per_query = {"q1": {"nDCG@10": base, "R@100": 1.0, "MRR@10": base}, "q2": {"nDCG@10": 0.0, "R@100": 0.5,
                                                                              "MRR@10": 0.0}}
    mean = {"nDCG@10": base / 2, "R@100": 0.75, "MRR@10": base / 2}
    per_lang = {"de": {"nDCG@10": 0.0, "R@100": 0.5, "MRR@10": 0.0},
                "en": {"nDCG@10": base, "R@100": 1.0, "MRR@10": base}}
    return SystemResult(key, MetricResult(per_query, mean, per_lang), search_seconds=0.01, hits=7)


@pytest.fixture
def results():
    return EvalResults(
        dataset={"name": "toy/set", "split": "test", "docs": 8, "queries": 2, "languages": ["de", "en"]},
        model={"source": "/ckpt/tiny", "hidden_size": 32},
        config={"k": 100, "max_query_length": 512, "max_passage_length": 512, "mcls": False, "bm25_k1": 0.9,
                "bm25_b": 0.4},
        systems=[_system("bm25", 0.5), _system("dense", 0.8), _system("multivec", 0.6), _system("all", 0.9)],
        metrics=["nDCG@10", "R@100", "MRR@10"],
        timings={"total": 1.5},
    )


def test_markdown_table(results):
    md = render_markdown(results)
    lines = md.splitlines()
    assert lines[0] == "### toy/set (test): 8 docs, 2 queries"
    assert "| System | nDCG@10 | R@100 | MRR@10 | nDCG@10 de | nDCG@10 en |" in lines
    assert "|---|---:|---:|---:|---:|---:|" in lines
    assert "| BM25 | 0.2500 | 0.7500 | 0.2500 | 0.0000 | 0.5000 |" in lines
    assert "| Multi-vec | 0.3000 | 0.7500 | 0.3000 | 0.0000 | 0.6000 |" in lines
    assert "| All | 0.4500 | 0.7500 | 0.4500 | 0.0000 | 0.9000 |" in lines
    assert "BM25 k1=0.9 b=0.4" in md
    results.dataset["languages"] = ["en"]  # one language: no per-language columns
    assert "| System | nDCG@10 | R@100 | MRR@10 |" in render_markdown(results).splitlines()


def test_files_written(results, tmp_path):
    files = write_reports(results, tmp_path / "rep")
    assert set(files) == {"markdown", "json", "plot"}
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["eval.json", "eval.md", "eval.png"]  # no temps
    assert (tmp_path / "rep" / "eval.md").read_text() == render_markdown(results)

    js = json.loads((tmp_path / "rep" / "eval.json").read_text())
    assert set(js) == {"dataset", "model", "config", "metrics", "timings", "environment", "files", "systems"}
    assert js["files"] == files
    assert [s["label"] for s in js["systems"]] == ["BM25", "Dense", "Multi-vec", "All"]
    dense = js["systems"][1]
    assert dense["mean"]["nDCG@10"] == 0.4 and dense["per_lang"]["en"]["MRR@10"] == 0.8
    assert dense["per_query"]["q2"]["R@100"] == 0.5 and dense["hits"] == 7

    png = (tmp_path / "rep" / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    img = matplotlib.image.imread(tmp_path / "rep" / "eval.png")
    assert img.shape[:2] == (height, width) and height > width / 2  # two panels (metrics, languages)
    assert img.std() > 0.05  # not blank
