"""Evaluation data: BEIR folders, MIRACL-style topics + TREC qrels, and TREC run files.

A :class:`RetrievalDataset` holds the whole corpus, the queries of one split (only those with a
relevant document in that split's qrels) and the qrels. Every malformed row raises
``ValueError`` naming ``file:line``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write, iter_jsonl, iter_lines

logger = logging.getLogger(__name__)

#: query id → {doc id → graded relevance}
Qrels = dict[str, dict[str, int]]
#: query id → {doc id → score}
Run = dict[str, dict[str, float]]


@dataclass
class Document:
    """One corpus entry; :attr:`full_text` is what gets indexed (title and text, as BEIR joins them)."""

    id: str
    text: str
    title: str = ""
    lang: str | None = None

    @property
    def full_text(self) -> str:
        # exactly BEIR's exact-search retrievers: (title + " " + text).strip()
        return f"{self.title} {self.text}".strip()

    def as_index_record(self) -> dict:
        """The dict ``M3Index.build`` takes: ``id``, ``text`` (title already joined) and ``metadata``."""
        rec: dict = {"id": self.id, "text": self.full_text}
        if self.lang is not None:
            rec["metadata"] = {"lang": self.lang}
        return rec


@dataclass
class RetrievalDataset:
    """A corpus, the evaluated queries of one split and their qrels."""

    name: str
    split: str
    corpus: list[Document]
    queries: dict[str, str]  # query id → text, only queries of this split with a relevant doc
    qrels: Qrels
    query_lang: dict[str, str] = field(default_factory=dict)  # empty when queries carry no lang
    source: dict[str, str] = field(default_factory=dict)  # file paths it was read from
    dropped_queries: int = 0  # qrels queries without any relevant (score > 0) document
    missing_docs: int = 0  # qrels pairs naming a doc id absent from the corpus

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries)

    @property
    def languages(self) -> list[str]:
        """Sorted distinct languages of the evaluated queries (empty when they carry none)."""
        return sorted(set(self.query_lang.values()))

    def stats(self) -> dict[str, int]:
        return {
            "docs": len(self.corpus),
            "queries": len(self.queries),
            "qrels": sum(len(v) for v in self.qrels.values()),
            "relevant": sum(sum(1 for r in v.values() if r > 0) for v in self.qrels.values()),
            "dropped_queries": self.dropped_queries,
            "missing_docs": self.missing_docs,
        }


# ---------------------------------------------------------------------------- line readers
def _str_field(obj: dict, key: str, where: str, *, required: bool = True, default: str = "") -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise ValueError(f"{where}: missing field {key!r}")
        return default
    value = obj[key]
    if isinstance(value, int) and not isinstance(value, bool) and key in ("_id", "docid", "id"):
        return str(value)  # numeric ids (PubMed ids, MS MARCO) are common; keep them as strings
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} is {type(value).__name__}, expected a string")
    return value


def _first_key(obj: dict, keys: Sequence[str]) -> str:
    return next((k for k in keys if k in obj), keys[0])


# ---------------------------------------------------------------------------- corpus / queries
def load_corpus(paths: str | Path | Iterable[str | Path]) -> list[Document]:
    """Documents of one or more JSON-lines files: ``_id`` (or ``docid``/``id``), ``text``, optional ``title``, ``lang``.

    Duplicate ids and empty ids raise ``ValueError`` with ``file:line``.
    """
    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    docs: list[Document] = []
    seen: dict[str, str] = {}
    for path in files:
        for n, obj in iter_jsonl(path):
            where = f"{path}:{n}"
            did = _str_field(obj, _first_key(obj, ("_id", "docid", "id")), where)
            if not did:
                raise ValueError(f"{where}: empty document id")
            if did in seen:
                raise ValueError(f"{where}: duplicate document id {did!r} (first at {seen[did]})")
            seen[did] = where
            lang = obj.get("lang")
            if lang is not None and not isinstance(lang, str):
                raise ValueError(f"{where}: field 'lang' is {type(lang).__name__}, expected a string")
            docs.append(Document(did, _str_field(obj, "text", where), _str_field(obj, "title", where, required=False),
                                 lang))
    return docs


def load_queries(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """(query id → text, query id → lang) of a BEIR ``queries.jsonl`` (lang map empty when absent)."""
    path = Path(path)
    texts: dict[str, str] = {}
    langs: dict[str, str] = {}
    for n, obj in iter_jsonl(path):
        where = f"{path}:{n}"
        qid = _str_field(obj, _first_key(obj, ("_id", "query_id", "id")), where)
        if not qid:
            raise ValueError(f"{where}: empty query id")
        if qid in texts:
            raise ValueError(f"{where}: duplicate query id {qid!r}")
        texts[qid] = _str_field(obj, "text", where)
        lang = obj.get("lang")
        if lang is not None:
            if not isinstance(lang, str):
                raise ValueError(f"{where}: field 'lang' is {type(lang).__name__}, expected a string")
            langs[qid] = lang
    return texts, langs


def load_topics(path: str | Path) -> dict[str, str]:
    """MIRACL / TREC topics TSV: ``qid<TAB>query`` per line (no header)."""
    path = Path(path)
    out: dict[str, str] = {}
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'qid<TAB>query' (2 columns), got {len(parts)}")
        qid, text = parts[0].strip(), parts[1]
        if not qid:
            raise ValueError(f"{path}:{n}: empty query id")
        if qid in out:
            raise ValueError(f"{path}:{n}: duplicate query id {qid!r}")
        out[qid] = text
    return out


# ---------------------------------------------------------------------------- qrels
def _parse_rel(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            raise ValueError(f"{where}: relevance {value!r} is not a number") from None
        if not f.is_integer():
            raise ValueError(f"{where}: relevance {value!r} is not an integer grade") from None
        return int(f)


def _add_qrel(qrels: Qrels, qid: str, did: str, rel: int, where: str) -> None:
    if not qid or not did:
        raise ValueError(f"{where}: empty query or document id")
    prev = qrels.setdefault(qid, {}).get(did)
    if prev is not None and prev != rel:
        raise ValueError(f"{where}: pair ({qid!r}, {did!r}) listed twice with different grades ({prev} and {rel})")
    qrels[qid][did] = rel


def load_beir_qrels(path: str | Path) -> Qrels:
    """BEIR ``qrels/<split>.tsv``: a header line, then ``query-id<TAB>corpus-id<TAB>score``."""
    path = Path(path)
    qrels: Qrels = {}
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if n == 1 and len(parts) == 3 and not _is_number(parts[2]):
            continue  # the header (query-id corpus-id score)
        if len(parts) != 3:
            raise ValueError(f"{path}:{n}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                             f"got {len(parts)}")
        where = f"{path}:{n}"
        _add_qrel(qrels, parts[0].strip(), parts[1].strip(), _parse_rel(parts[2].strip(), where), where)
    return qrels


def load_trec_qrels(path: str | Path) -> Qrels:
    """TREC qrels: ``qid Q0 docid rel`` per line, whitespace-separated (MIRACL's format)."""
    qrels: Qrels = {}
    for where, parts in _trec_rows(path, "qid Q0 docid rel"):
        _add_qrel(qrels, parts[0], parts[2], _parse_rel(parts[3], where), where)
    return qrels


def _trec_rows(path: str | Path, layout: str) -> Iterator[tuple[str, list[str]]]:
    """(``file:line``, columns) of each non-blank whitespace-separated line, which must have the
    columns named in ``layout``."""
    path = Path(path)
    width = len(layout.split())
    for n, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != width:
            raise ValueError(f"{path}:{n}: expected {width} columns '{layout}', got {len(parts)}")
        yield f"{path}:{n}", parts


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- datasets
def _assemble(name: str, split: str, corpus: list[Document], queries: Mapping[str, str], langs: Mapping[str, str],
              qrels: Qrels, qrels_file: Path, source: dict[str, str]) -> RetrievalDataset:
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise ValueError(f"{qrels_file}: {len(unknown)} query id(s) not in the queries file, e.g. {unknown[0]!r}")
    doc_ids = {d.id for d in corpus}
    missing = sum(1 for rels in qrels.values() for d in rels if d not in doc_ids)
    if missing:
        # kept: they still count as relevant (lower recall), as trec_eval counts them
        logger.warning("%s: %d qrels pair(s) name documents absent from the corpus", qrels_file, missing)
    # only queries with a relevant document are evaluated (a query without one scores 0 by definition)
    kept = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    dropped = len(qrels) - len(kept)
    if dropped:
        logger.warning("%s: %d query id(s) have no relevant document and are not evaluated", qrels_file, dropped)
    if not kept:
        raise ValueError(f"{qrels_file}: no query with a relevant (score > 0) document")
    order = {q: i for i, q in enumerate(queries)}
    kept.sort(key=order.__getitem__)  # queries-file order, so runs and reports are stable
    return RetrievalDataset(
        name=name, split=split, corpus=corpus,
        queries={q: queries[q] for q in kept},
        qrels={q: qrels[q] for q in kept},
        query_lang={q: langs[q] for q in kept if q in langs} if all(q in langs for q in kept) else {},
        source=source, dropped_queries=dropped, missing_docs=missing,
    )


def load_beir(directory: str | Path, split: str = "test", *, name: str | None = None) -> RetrievalDataset:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv`` (``.jsonl.gz`` accepted)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    corpus_file = _find(directory, "corpus")
    queries_file = _find(directory, "queries")
    qrels_file = directory / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        avail = sorted(p.stem for p in (directory / "qrels").glob("*.tsv")) if (directory / "qrels").is_dir() else []
        raise FileNotFoundError(f"{qrels_file}: no qrels for split {split!r} (available: {', '.join(avail) or 'none'})")
    qrels = load_beir_qrels(qrels_file)
    queries, langs = load_queries(queries_file)
    corpus = load_corpus(corpus_file)
    src = {"corpus": str(corpus_file), "queries": str(queries_file), "qrels": str(qrels_file)}
    return _assemble(name or _dataset_name(directory), split, corpus, queries, langs, qrels, qrels_file, src)


def load_miracl(corpus: str | Path | Iterable[str | Path], topics: str | Path, qrels: str | Path, *,
                name: str = "miracl", split: str = "dev", lang: str | None = None) -> RetrievalDataset:
    """MIRACL-style data: corpus JSON-lines (``docid``, ``title``, ``text``; a directory means all its
    ``*.jsonl``/``*.jsonl.gz``), topics TSV (``qid<TAB>query``) and TREC qrels. ``lang`` tags every query."""
    if isinstance(corpus, str | Path) and Path(corpus).is_dir():
        files = sorted(p for p in Path(corpus).iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
        if not files:
            raise FileNotFoundError(f"{corpus}: no .jsonl or .jsonl.gz files")
        corpus = files
    docs = load_corpus(corpus)
    queries = load_topics(topics)
    q = load_trec_qrels(qrels)
    langs = {k: lang for k in queries} if lang else {}
    src = {"corpus": str(corpus), "topics": str(topics), "qrels": str(qrels)}
    return _assemble(name, split, docs, queries, langs, q, Path(qrels), src)


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".jsonl", ".jsonl.gz"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    raise FileNotFoundError(f"{directory}: no {stem}.jsonl")


def _dataset_name(directory: Path) -> str:
    """The path below the last ``data`` folder ("xquad_r/paragraph/en"), else the last two parts."""
    parts = directory.resolve().parts
    if "data" in parts[:-1]:
        cut = len(parts) - 1 - parts[::-1].index("data")
        return "/".join(parts[cut + 1 :])
    return "/".join(parts[-2:])


# ---------------------------------------------------------------------------- TREC runs
def write_trec_run(path: str | Path, run: Mapping[str, Sequence[tuple[str, float]]], *, tag: str = "m3embed") -> None:
    """Write ``qid Q0 docid rank score tag`` lines; each query's hits are written in the given (best-first) order."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag {tag!r} must be a non-empty string without whitespace")
    with atomic_write(path, "w") as f:
        for qid, hits in run.items():
            for rank, (did, score) in enumerate(hits, start=1):
                if any(c.isspace() for c in qid) or any(c.isspace() for c in did):
                    raise ValueError(f"query {qid!r} / doc {did!r}: TREC runs cannot hold ids with whitespace")
                f.write(f"{qid} Q0 {did} {rank} {float(score):.6f} {tag}\n")


def read_trec_run(path: str | Path) -> Run:
    """A TREC run file (``qid Q0 docid rank score tag``) → ``{qid: {docid: score}}``."""
    run: Run = {}
    for where, parts in _trec_rows(path, "qid Q0 docid rank score tag"):
        try:
            score = float(parts[4])
        except ValueError:
            raise ValueError(f"{where}: score {parts[4]!r} is not a number") from None
        docs = run.setdefault(parts[0], {})
        if parts[2] in docs:
            raise ValueError(f"{where}: document {parts[2]!r} listed twice for query {parts[0]!r}")
        docs[parts[2]] = score
    return run
