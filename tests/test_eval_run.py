"""End to end: ``evaluate`` and ``m3embed eval`` on a tiny dataset with a tiny random checkpoint.

Every mode's run is checked against brute-force scoring of all documents with the core's
scoring functions (the toy corpus is smaller than every candidate depth, so each mode is exact).
"""

import json

import numpy as np
import pytest
import torch
from beir_toy import write_beir
from helpers import tiny_checkpoint
from typer.testing import CliRunner

from m3embed import M3Model
from m3embed.cli import app
from m3embed.eval import BM25, evaluate, evaluate_run, load_beir, read_trec_run
from m3embed.scoring import PAPER_WEIGHTS, dense_scores, lexical_scores, maxsim, weighted_sum

ALL_MODES = ("dense", "sparse", "multivec", "dense+sparse", "all", "rrf")
QLEN, PLEN = 32, 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "toy")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), colbert_dim=16, seed=3)


@pytest.fixture(scope="module")
def model(ckpt):
    return M3Model.from_pretrained(ckpt)


def _index_available():
    try:
        from m3embed.index import M3Index  # noqa: F401
    except ImportError as e:
        pytest.skip(f"m3embed.index not importable yet ({e})")


def _brute_force(model, ds, mcls=False):
    """mode → (query × doc score matrix, doc is a candidate mask) from full scoring of every pair."""
    kw = {"return_dense": True, "return_sparse": True, "return_colbert": True}
    q = model.encode(list(ds.queries.values()), max_length=QLEN, **kw)
    p = model.encode([d.full_text for d in ds.corpus], max_length=PLEN, mcls=mcls, **kw)
    dense = dense_scores(q.dense, p.dense).astype(np.float64)
    sparse = lexical_scores(q.lexical, p.lexical).astype(np.float64)
    qc, qm = (torch.from_numpy(x) for x in q.colbert.padded())
    pc, pm = (torch.from_numpy(x) for x in p.colbert.padded())
    colbert = maxsim(qc, qm, pc, pm).double().numpy()
    w = dict(zip(("dense", "sparse", "colbert"), PAPER_WEIGHTS, strict=True))
    return {
        "dense": dense,
        "sparse": np.where(sparse > 0, sparse, -np.inf),  # sparse search returns matching documents only
        "multivec": colbert,
        "dense+sparse": weighted_sum({"dense": dense, "sparse": sparse}, {"dense": 1.0, "sparse": 0.3}),
        "all": weighted_sum({"dense": dense, "sparse": sparse, "colbert": colbert}, w),
    }


def _ranking(scores, ds, k):
    out = {}
    for i, qid in enumerate(ds.query_ids):
        order = [j for j in np.argsort(-scores[i], kind="stable") if np.isfinite(scores[i][j])][:k]
        out[qid] = [ds.corpus[j].id for j in order]
    return out


def test_evaluate_every_mode_equals_brute_force(data, model, tmp_path):
    _index_available()
    ds = load_beir(data, "test")
    res = evaluate(data, "test", model, modes=ALL_MODES, k=5, max_query_length=QLEN, max_passage_length=PLEN,
                   batch_size=4, out_dir=tmp_path / "out", save_runs=True, show_progress=False,
                   index_options={"multivec": "fp32"})
    assert [s.key for s in res.systems] == ["bm25", *ALL_MODES]
    assert [s.label for s in res.systems] == ["BM25", "Dense", "Sparse", "Multi-vec", "Dense+Sparse", "All", "RRF"]
    brute = _brute_force(model, ds)
    for mode, scores in brute.items():
        want = _ranking(scores, ds, 5)
        run = read_trec_run(res.files[f"run_{mode}"])
        got = {q: sorted(docs, key=docs.get, reverse=True) for q, docs in run.items()}
        got.update({q: [] for q in ds.query_ids if q not in got})
        assert got == want, mode
        # metrics of the system == metrics of the brute-force ranking
        fake = {q: {d: float(5 - r) for r, d in enumerate(ds_)} for q, ds_ in want.items()}
        ref = evaluate_run(ds.qrels, fake, query_lang=ds.query_lang)
        sys_m = res.system(mode).metrics
        for qid in ds.query_ids:
            assert sys_m.per_query[qid] == pytest.approx(ref.per_query[qid]), (mode, qid)
        assert set(sys_m.per_lang) == {"de", "en", "ja"}
    # rrf fuses the dense, sparse and multivec rankings: its top hit is some list's top hit
    rrf = read_trec_run(res.files["run_rrf"])
    for i, qid in enumerate(ds.query_ids):
        top = max(rrf[qid], key=rrf[qid].get)
        firsts = {ds.corpus[int(np.argmax(brute[m][i]))].id for m in ("dense", "sparse", "multivec")}
        assert top in firsts
    # BM25 row equals BM25 run directly
    bm = BM25(model.tokenizer).index([d.id for d in ds.corpus], [d.full_text for d in ds.corpus])
    direct = {q: {h.id: h.score for h in hits} for q, hits in zip(ds.query_ids, bm.search(list(ds.queries.values()),
                                                                                          k=5), strict=True)}
    assert res.system("bm25").metrics.mean == pytest.approx(evaluate_run(ds.qrels, direct).mean)

    # report files
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "| System | nDCG@10 | R@100 | MRR@10 | nDCG@10 de | nDCG@10 en | nDCG@10 ja |" in md
    for s in res.systems:
        assert f"| {s.label} | {s.metrics.mean['nDCG@10']:.4f} |" in md
    js = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert js["dataset"]["queries"] == 5 and js["dataset"]["docs"] == 8 and js["dataset"]["split"] == "test"
    assert js["config"]["index_options"] == {"store_text": False, "multivec": "fp32"}
    assert js["model"]["hidden_size"] == 32 and js["model"]["colbert_dim"] == 16
    assert {"index_build", "query_encode", "bm25_index", "search_all", "total"} <= set(js["timings"])
    assert (tmp_path / "out" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mcls_passages(data, model):
    _index_available()
    ds = load_beir(data, "test")
    res = evaluate(data, "test", model, modes=("dense",), k=8, max_query_length=QLEN, max_passage_length=PLEN,
                   mcls=True, bm25=False, show_progress=False)
    want = _ranking(_brute_force(model, ds, mcls=True)["dense"], ds, 8)
    ref = evaluate_run(ds.qrels, {q: {d: float(8 - r) for r, d in enumerate(v)} for q, v in want.items()})
    assert res.system("dense").metrics.mean == pytest.approx(ref.mean)
    assert res.config["mcls"] is True and res.config["index_options"]["multivec"] == "none"


def test_bm25_only_needs_no_model(data, tmp_path):
    res = evaluate(data, "dev", None, modes=(), out_dir=tmp_path / "o", show_progress=False)
    assert [s.key for s in res.systems] == ["bm25"] and res.model is None
    assert res.system("bm25").metrics.mean["MRR@10"] == 1.0  # "longest river in Africa" → the Nile doc
    with pytest.raises(ValueError, match="need a model"):
        evaluate(data, "dev", None)
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate(data, "dev", None, modes=("colbert",))


def test_cli_eval(data, ckpt, tmp_path):
    _index_available()
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["eval", str(data), "--split", "test", "--model", str(ckpt), "-o", str(out), "-k", "5",
                            "--max-passage-length", "64", "--max-query-length", "32", "--modes", "dense,all"])
    assert r.exit_code == 0, r.output
    for label in ("BM25", "Dense", "All"):
        assert label in r.output
    assert str(out / "eval.md") in r.output and (out / "eval.png").is_file()
    assert "Sparse" not in (out / "eval.md").read_text()

    r = runner.invoke(app, ["eval", str(data), "--split", "nope", "--modes", "none"])
    assert r.exit_code == 2 and "no qrels for split 'nope'" in r.output
    r = runner.invoke(app, ["eval", str(data), "--modes", "dense,bogus", "--model", str(ckpt)])
    assert r.exit_code != 0 and "bogus" in r.output
    r = runner.invoke(app, ["eval", str(data), "--weights", "1,x,1", "--model", str(ckpt)])
    assert r.exit_code != 0 and "dense,sparse,colbert" in r.output
