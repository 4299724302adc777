"""nDCG@10, Recall@100 and MRR@10 against hand computations on a toy run."""

import math
from typing import NamedTuple

import pytest

from m3embed.eval.metrics import evaluate_run, hits_to_run

QRELS = {
    "q1": {"d1": 1, "d3": 1},  # relevant at rank 2 and not retrieved
    "q2": {"d5": 2, "d6": 1},  # graded: the grade-2 doc at rank 1, the grade-1 doc at rank 3
    "q3": {"d1": 1},  # not in the run at all → 0 everywhere
    "q4": {"dx": 1},  # relevant at rank 11: outside @10, inside @100
}
RUN = {
    "q1": {"d2": 3.0, "d1": 2.0, "d4": 1.0},
    "q2": {"d5": 0.9, "d7": 0.8, "d6": 0.7},
    "q4": {**{f"n{i}": 20.0 - i for i in range(10)}, "dx": 5.0},
    "q9": {"d1": 1.0},  # not in the qrels: ignored
}
LANG = {"q1": "en", "q2": "en", "q3": "de", "q4": "de"}


def _log2(x):
    return math.log(x, 2)


def test_hand_computed_values():
    r = evaluate_run(QRELS, RUN, query_lang=LANG)
    # q1: DCG = 1/log2(3); ideal = 1 + 1/log2(3)
    ndcg1 = (1 / _log2(3)) / (1 + 1 / _log2(3))
    # q2 (trec_eval nDCG uses gain = grade): DCG = 2 + 1/log2(4); ideal = 2 + 1/log2(3)
    ndcg2 = (2 + 1 / _log2(4)) / (2 + 1 / _log2(3))
    expect = {
        "q1": {"nDCG@10": ndcg1, "R@100": 0.5, "MRR@10": 0.5},
        "q2": {"nDCG@10": ndcg2, "R@100": 1.0, "MRR@10": 1.0},
        "q3": {"nDCG@10": 0.0, "R@100": 0.0, "MRR@10": 0.0},
        "q4": {"nDCG@10": 0.0, "R@100": 1.0, "MRR@10": 0.0},
    }
    assert set(r.per_query) == set(expect)
    for q, vals in expect.items():
        for m, v in vals.items():
            assert r.per_query[q][m] == pytest.approx(v, abs=1e-9), (q, m)
    for m in ("nDCG@10", "R@100", "MRR@10"):  # mean over all 4 qrels queries, q3 included as 0
        assert r.mean[m] == pytest.approx(sum(expect[q][m] for q in expect) / 4, abs=1e-9)
    assert r.per_lang["en"]["MRR@10"] == pytest.approx(0.75)
    assert r.per_lang["de"]["R@100"] == pytest.approx(0.5)
    assert r.per_lang["en"]["nDCG@10"] == pytest.approx((ndcg1 + ndcg2) / 2)


def test_subset_of_metrics_and_unknown_metric():
    r = evaluate_run(QRELS, RUN, ["MRR@10"])
    assert r.mean == {"MRR@10": pytest.approx(0.375)} and r.per_lang == {}
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['P@5'\]"):
        evaluate_run(QRELS, RUN, ["P@5"])


class _Hit(NamedTuple):
    id: str
    score: float


class _Obj:
    def __init__(self, id, score):
        self.id, self.score = id, score


def test_hits_to_run_accepts_objects_and_pairs():
    run = hits_to_run(["a", "b"], [[_Obj("d1", 2.0), _Hit("d2", 1.0), _Obj("d1", 0.5)], [("d3", 0.25)]])
    assert run == {"a": {"d1": 2.0, "d2": 1.0}, "b": {"d3": 0.25}}  # duplicate keeps its best-ranked score
    with pytest.raises(ValueError, match="2 query ids but 1 result lists"):
        hits_to_run(["a", "b"], [[]])


def test_ties_follow_trec_eval_order_for_every_metric():
    # trec_eval ranks equal scores by document id descending: "b" before "a"
    qrels = {"q": {"a": 1}}
    r = evaluate_run(qrels, {"q": {"a": 1.0, "b": 1.0}})
    assert r.per_query["q"]["MRR@10"] == 0.5
    assert r.per_query["q"]["nDCG@10"] == pytest.approx(1 / _log2(3))
