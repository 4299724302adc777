"""BM25 baseline over XLM-R token ids (``bm25s`` scoring; full documents, no special tokens).

Scores are Lucene's BM25 (``bm25s`` method ``"lucene"``):
``Σ_{t ∈ q} idf(t) · tf / (tf + k1·(1 − b + b·|d|/avgdl))`` with
``idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))``; a query token that occurs twice counts twice
(as in a Lucene boolean query). Only documents sharing a token with the query are returned.

Default ``k1 = 1.5, b = 0.75`` (``bm25s``' defaults): with them this class reproduces the BM25
column of ``shared/data/BASELINES.md`` to the fourth decimal, so the harness's BM25 row can be
checked against that table. ``PYSERINI_DEFAULTS`` (0.9, 0.4) are the paper's Pyserini runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import bm25s
import numpy as np
from tokenizers import Tokenizer

from ..tokenize import M3Tokenizer

# bm25s sets its logger to DEBUG on import, which floods any configured root handler
if logging.getLogger("bm25s").level == logging.DEBUG:
    logging.getLogger("bm25s").setLevel(logging.WARNING)

PYSERINI_DEFAULTS = (0.9, 0.4)
BM25S_DEFAULTS = (1.5, 0.75)


class Hit(NamedTuple):
    id: str
    score: float


class BM25:
    """A BM25 index of documents tokenised into XLM-R SentencePiece ids.

    ``tokenizer``: an :class:`M3Tokenizer`, a ``tokenizers.Tokenizer`` or a directory with ``tokenizer.json``.
    """

    def __init__(self, tokenizer: M3Tokenizer | Tokenizer | str | Path, *, k1: float = BM25S_DEFAULTS[0],
                 b: float = BM25S_DEFAULTS[1]) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if isinstance(tokenizer, str | Path):
            tokenizer = M3Tokenizer.from_dir(tokenizer)
        self._tok: Tokenizer = tokenizer.backend if isinstance(tokenizer, M3Tokenizer) else tokenizer
        self.k1, self.b = float(k1), float(b)
        self._retriever: bm25s.BM25 | None = None
        self._doc_ids: list[str] = []
        self._lookup = np.zeros(0, dtype=np.int64)  # token id → compact bm25s id, -1 if not in the corpus

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, whole text, no special tokens."""
        if not texts:
            return []
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def index(self, doc_ids: Sequence[str], texts: Sequence[str]) -> BM25:
        """Index ``texts`` under ``doc_ids`` (replaces any previous index); returns ``self``."""
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} document ids but {len(texts)} texts")
        if not texts:
            raise ValueError("cannot index an empty corpus")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError("document ids are not unique")
        tokens = self.tokenize(texts)
        flat = np.fromiter((t for doc in tokens for t in doc), dtype=np.int64)
        vocab = np.unique(flat)
        size = int(vocab.max(initial=0)) + 1
        self._lookup = np.full(max(size, self._tok.get_vocab_size(with_added_tokens=True)), -1, dtype=np.int64)
        self._lookup[vocab] = np.arange(len(vocab))
        compact = [self._lookup[np.asarray(doc, dtype=np.int64)].tolist() for doc in tokens]
        vocab_dict = {int(t): i for i, t in enumerate(vocab.tolist())}
        if not vocab_dict:
            raise ValueError("every document is empty after tokenisation")
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        retriever.index((compact, vocab_dict), create_empty_token=False, show_progress=False)
        self._retriever = retriever
        self._doc_ids = list(doc_ids)
        return self

    def __len__(self) -> int:
        return len(self._doc_ids)

    def query_token_ids(self, query: str) -> np.ndarray:
        """Compact (index-vocabulary) ids of the query's tokens that occur in the corpus, repeats kept."""
        ids = np.asarray(self.tokenize([query])[0], dtype=np.int64)
        ids = ids[ids < len(self._lookup)]
        compact = self._lookup[ids]
        return compact[compact >= 0]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` → ``[n_docs]`` float32 (0 = no shared token)."""
        if self._retriever is None:
            raise RuntimeError("BM25.index must be called before scoring")
        ids = self.query_token_ids(query)
        if len(ids) == 0:
            return np.zeros(len(self._doc_ids), dtype=np.float32)
        return np.asarray(self._retriever.get_scores_from_ids(ids.tolist()), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int = 100) -> list[list[Hit]]:
        """Top-``k`` documents of each query, best first (ties: corpus order); at most the matching documents."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of str, not a single str")
        if k <= 0:
            raise ValueError(f"k must be >= 1, got {k}")
        out: list[list[Hit]] = []
        for q in queries:
            s = self.scores(q)
            cand = np.flatnonzero(s > 0)
            if len(cand) > k:
                cand = cand[np.argpartition(-s[cand], k - 1)[:k]]
                # argpartition splits ties at the k-th score arbitrarily; take every doc tied with it
                kth = s[cand].min()
                cand = np.union1d(cand[s[cand] > kth], np.flatnonzero(s == kth))
            order = np.lexsort((cand, -s[cand]))[:k]
            out.append([Hit(self._doc_ids[i], float(s[i])) for i in cand[order]])
        return out
