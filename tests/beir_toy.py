"""A tiny BEIR folder for the evaluation tests (three languages, two splits, titles on some docs)."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = [
    {"_id": "d1", "title": "Cats", "text": "The cat sleeps on the warm mat all afternoon.", "lang": "en"},
    {"_id": "d2", "title": "", "text": "Dogs bark at the postman every single morning.", "lang": "en"},
    {"_id": "d3", "title": "Paris", "text": "Paris is the capital and largest city of France.", "lang": "en"},
    {"_id": "d4", "title": "Katzen", "text": "Die Katze schläft den ganzen Nachmittag auf der Matte.", "lang": "de"},
    {"_id": "d5", "title": "", "text": "Berlin ist die Hauptstadt von Deutschland.", "lang": "de"},
    {"_id": "d6", "title": "東京", "text": "東京は日本の首都であり、最大の都市です。", "lang": "ja"},
    {"_id": "d7", "title": "", "text": "富士山は日本で一番高い山です。", "lang": "ja"},
    {"_id": "d8", "title": "Rivers", "text": "The Nile is a long river in Africa.", "lang": "en"},
]
QUERIES = [
    {"_id": "q1", "text": "where does the cat sleep", "lang": "en"},
    {"_id": "q2", "text": "capital of France", "lang": "en"},
    {"_id": "q3", "text": "Hauptstadt von Deutschland", "lang": "de"},
    {"_id": "q4", "text": "日本の首都", "lang": "ja"},
    {"_id": "q5", "text": "longest river in Africa", "lang": "en"},
    {"_id": "q6", "text": "Wo schläft die Katze", "lang": "de"},
]
TEST_QRELS = [("q1", "d1", 1), ("q2", "d3", 1), ("q3", "d5", 1), ("q4", "d6", 1), ("q6", "d4", 1), ("q6", "d1", 1)]
DEV_QRELS = [("q5", "d8", 1)]


def write_beir(directory: Path, *, docs=DOCS, queries=QUERIES, splits=None) -> Path:
    """Write corpus.jsonl, queries.jsonl and qrels/<split>.tsv (with header) under ``directory``."""
    splits = splits if splits is not None else {"test": TEST_QRELS, "dev": DEV_QRELS}
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    (directory / "corpus.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs),
                                            encoding="utf-8")
    (directory / "queries.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries),
                                             encoding="utf-8")
    for split, rows in splits.items():
        body = "".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows)
        (directory / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + body, encoding="utf-8")
    return directory
