"""Training data: validated jsonl rows, pre-tokenised once, batched by dataset and length bucket.

A row is ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` with optional ``pos_scores`` /
``neg_scores`` (teacher scores, one per text) and ``prompt`` (a per-row query instruction). Each
file is one dataset: a batch never mixes files. Within a file, examples are bucketed by length
(the longest of query, positives and negatives after truncation; buckets 0-500-1000-2000-…-7000-∞
tokens as the paper), shuffled, and packed so that two rows sharing a positive never land in one
batch (they would serve each other's positive as an in-batch negative).

Everything random is a pure function of ``(seed, epoch, …)``: every rank builds the same plan, takes
its own slice of each global batch, and a resumed run continues from ``(epoch, batch index)``.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tokenize import M3Tokenizer

logger = logging.getLogger(__name__)

#: Bucket boundaries in tokens (``R:split_data_by_length.py``): [0, 500), [500, 1000), …, [7000, ∞).
BUCKET_BOUNDS = (0, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000)
#: Per-device batch size by bucket on an 80 GB A800 for XLM-R-large (paper Table 9 / reference code).
PAPER_BATCH_FINETUNE = (48, 32, 20, 18, 14, 14, 12, 10, 8)  # group size 8
PAPER_BATCH_UNSUPERVISED = (700, 570, 388, 288, 224, 180, 157, 128, 104)  # group size 1
#: The paper's device memory and model (24 layers × 1024 hidden), the reference point of the table.
PAPER_DEVICE_GIB = 80.0
PAPER_LAYERS_X_HIDDEN = 24 * 1024


class DataError(ValueError):
    """A training file that cannot be used, naming file and line."""


@dataclass(frozen=True)
class Example:
    """One validated row; texts are indices into the dataset's text tables."""

    query: int
    pos: tuple[int, ...]
    neg: tuple[int, ...]
    pos_scores: tuple[float, ...] | None
    neg_scores: tuple[float, ...] | None
    line: int


@dataclass
class TrainBatch:
    """A device's micro-batch: ``B`` queries and ``B·G`` passages (group of query b = rows b·G … b·G+G-1,
    positive first). Ids are right-padded; ``teacher`` is ``[B, G]`` raw teacher scores or None."""

    q_ids: torch.Tensor
    q_mask: torch.Tensor
    p_ids: torch.Tensor
    p_mask: torch.Tensor
    group_size: int
    teacher: torch.Tensor | None
    dataset: str
    lines: list[int]  #: source line of each query row (for error messages)

    @property
    def n_tokens(self) -> int:
        """Real (non-pad) tokens of queries and passages."""
        return int(self.q_mask.sum()) + int(self.p_mask.sum())

    def to(self, device: torch.device) -> TrainBatch:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return TrainBatch(mv(self.q_ids), mv(self.q_mask), mv(self.p_ids), mv(self.p_mask), self.group_size,
                          mv(self.teacher), self.dataset, self.lines)

    def where(self) -> str:
        shown = ", ".join(str(n) for n in self.lines[:8]) + (", …" if len(self.lines) > 8 else "")
        return f"{self.dataset} lines {shown}"


# ---------------------------------------------------------------------------- reading and validation
def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _check_texts(value: object, key: str, where: str, *, required: bool) -> list[str]:
    if value is None:
        if required:
            raise DataError(f"{where}: missing {key!r} (a list with at least one text)")
        return []
    if isinstance(value, str):
        value = [value]  # a lone string is accepted as a one-element list
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} must be a list of strings, got {type(value).__name__}")
    if required and not value:
        raise DataError(f"{where}: {key!r} is empty (need at least one text)")
    for i, t in enumerate(value):
        if not isinstance(t, str):
            raise DataError(f"{where}: {key}[{i}] is {type(t).__name__}, expected a string")
        if not t.strip():
            raise DataError(f"{where}: {key}[{i}] is an empty text")
    return value


def _check_scores(value: object, key: str, n: int, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: {key!r} needs one number per text ({n}), got {got}")
    for i, s in enumerate(value):
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
            raise DataError(f"{where}: {key}[{i}] = {s!r} is not a finite number")
    return tuple(float(s) for s in value)


def read_rows(path: str | Path, *, need_scores: bool = False) -> list[tuple[int, dict]]:
    """Validated ``(line number, row)`` pairs of a ``.jsonl`` / ``.jsonl.gz`` file (blank lines skipped)."""
    return list(iter_rows(path, need_scores=need_scores))


def iter_rows(path: str | Path, *, need_scores: bool = False) -> Iterator[tuple[int, dict]]:
    """:func:`read_rows` one row at a time (a large file is never held as raw rows)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    n_rows = 0
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg}); training files are jsonl, one "
                                    "object per line") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                q = obj.get("query")
                if not isinstance(q, str):
                    raise DataError(f"{where}: missing 'query' string" if q is None
                                    else f"{where}: 'query' is {type(q).__name__}, expected a string")
                if not q.strip():
                    raise DataError(f"{where}: 'query' is an empty text")
                obj["pos"] = _check_texts(obj.get("pos"), "pos", where, required=True)
                obj["neg"] = _check_texts(obj.get("neg"), "neg", where, required=False)
                prompt = obj.get("prompt")
                if prompt is not None and not isinstance(prompt, str):
                    raise DataError(f"{where}: 'prompt' is {type(prompt).__name__}, expected a string")
                if need_scores:
                    for key, texts in (("pos_scores", obj["pos"]), ("neg_scores", obj["neg"])):
                        if key not in obj:
                            raise DataError(f"{where}: missing {key!r} (use_teacher_scores is on)")
                        obj[key] = _check_scores(obj[key], key, len(texts), where)
                n_rows += 1
                yield n, obj
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); expected jsonl or jsonl.gz") from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({e})") from None
    if not n_rows:
        raise DataError(f"{path}: no rows")


# ---------------------------------------------------------------------------- one dataset
class TrainDataset:
    """One file: examples plus pre-tokenised query and passage tables."""

    def __init__(self, path: str | Path, tokenizer: M3Tokenizer, *, query_max_len: int, passage_max_len: int,
                 query_instruction: str | None = None, query_instruction_format: str = "{}{}",
                 need_scores: bool = False, group_size: int = 8) -> None:
        self.path = Path(path)
        self.name = str(path)
        passages: dict[str, int] = {}
        self.passage_texts: list[str] = []
        query_texts: list[str] = []

        def intern(t: str) -> int:
            idx = passages.get(t)
            if idx is None:
                idx = passages[t] = len(self.passage_texts)
                self.passage_texts.append(t)
            return idx

        examples = []
        for line, obj in iter_rows(self.path, need_scores=need_scores):
            instr = obj.get("prompt", query_instruction)
            q = obj["query"] if instr is None else query_instruction_format.format(instr, obj["query"])
            query_texts.append(q)
            examples.append(Example(
                query=len(query_texts) - 1, pos=tuple(intern(t) for t in obj["pos"]),
                neg=tuple(intern(t) for t in obj["neg"]), pos_scores=obj.get("pos_scores") if need_scores else None,
                neg_scores=obj.get("neg_scores") if need_scores else None, line=line,
            ))
        self.examples = examples
        self.query_texts = query_texts
        n_without = sum(1 for e in examples if not e.neg)
        self.group_size = group_size
        if group_size > 1 and n_without:
            if n_without == len(examples):
                self.group_size = 1
                logger.warning("%s: no row has negatives; its batches use group size 1 (in-batch negatives "
                               "only) instead of %d", self.name, group_size)
            else:
                first = next(e.line for e in examples if not e.neg)
                raise DataError(f"{self.path}:{first}: row has no 'neg' texts while other rows of the file do "
                                f"({n_without} rows without); add negatives or move those rows to their own file")
        self.tokenizer = tokenizer
        self.query_max_len, self.passage_max_len = query_max_len, passage_max_len
        self.query_ids = _tokenize(tokenizer, query_texts, query_max_len)
        self.passage_ids = _tokenize(tokenizer, self.passage_texts, passage_max_len)
        qlen = np.fromiter((len(x) for x in self.query_ids), dtype=np.int64, count=len(self.query_ids))
        plen = np.fromiter((len(x) for x in self.passage_ids), dtype=np.int64, count=len(self.passage_ids))
        self.lengths = np.array([max(qlen[e.query], *(plen[i] for i in e.pos + e.neg)) for e in examples],
                                dtype=np.int64)
        self.n_query_tokens, self.n_passage_tokens = int(qlen.sum()), int(plen.sum())

    def __len__(self) -> int:
        return len(self.examples)

    def sample_group(self, idx: int, rng: np.random.Generator) -> tuple[int, list[int], list[float] | None]:
        """(query index, [positive, negatives…] passage indices, teacher scores or None) for example ``idx``."""
        ex = self.examples[idx]
        k = int(rng.integers(len(ex.pos)))
        pos = ex.pos[k]
        n = self.group_size - 1
        if n == 0:
            chosen: list[int] = []
        elif len(ex.neg) >= n:
            chosen = [int(i) for i in rng.choice(len(ex.neg), size=n, replace=False)]
        else:  # too few: every negative once, the rest drawn with replacement
            chosen = [int(i) for i in rng.permutation(len(ex.neg))]
            chosen += [int(i) for i in rng.integers(len(ex.neg), size=n - len(chosen))]
        passages = [pos] + [ex.neg[i] for i in chosen]
        scores = None
        if ex.pos_scores is not None and ex.neg_scores is not None:
            scores = [ex.pos_scores[k]] + [ex.neg_scores[i] for i in chosen]
        return ex.query, passages, scores


#: Texts longer than ``max_len × 16`` characters are cut before tokenising: tokenisers emit far more
#: than one token per 16 characters, so the cut lies well past the truncation point (speed only).
_CHARS_PER_TOKEN_CUT = 16


def _precut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    space = text.rfind(" ", limit - limit // 8, limit)  # end on a word boundary when there is one nearby
    return text[: space if space > 0 else limit]


def _tokenize(tok: M3Tokenizer, texts: Sequence[str], max_len: int, chunk: int = 4096) -> list[np.ndarray]:
    """Truncated ids of each text as int32 arrays."""
    out: list[np.ndarray] = []
    limit = max_len * _CHARS_PER_TOKEN_CUT
    for s in range(0, len(texts), chunk):
        part = list(texts[s : s + chunk])
        ids = tok.tokenize([_precut(t, limit) for t in part], max_length=max_len)
        for k, t in enumerate(part):
            if len(t) > limit and len(ids[k]) < max_len:  # the cut text did not fill max_len: use it all
                ids[k] = tok.tokenize([t], max_length=max_len)[0]
        out.extend(np.asarray(x, dtype=np.int32) for x in ids)
    return out


def bucket_of(lengths: np.ndarray) -> np.ndarray:
    """Bucket index 0…8 of each example length."""
    return np.searchsorted(np.asarray(BUCKET_BOUNDS[1:]), lengths, side="right")


def paper_batch_sizes(group_size: int, scale: float, cap: int | None = None) -> list[int]:
    """The paper's per-device batch size per bucket, scaled (at least 1 each).

    Group size 1 uses the unsupervised table; other group sizes the fine-tuning table (G=8)
    scaled by 8/G, so that the number of passages per batch stays about the same.
    """
    if group_size == 1:
        base = [float(b) for b in PAPER_BATCH_UNSUPERVISED]
    else:
        base = [b * 8 / group_size for b in PAPER_BATCH_FINETUNE]
    sizes = [max(1, int(b * scale)) for b in base]
    return [min(s, cap) for s in sizes] if cap else sizes


def memory_scale(budget_gib: float, layers: int, hidden: int) -> float:
    """Rough scale of the paper's table for ``budget_gib`` of device memory and a ``layers × hidden`` encoder.

    Activation memory per token grows with layers × hidden, and the table was set for 80 GB and
    24 × 1024; this ignores the weights and optimizer state (≈ 16 bytes per parameter), so
    leave headroom for large models.
    """
    return budget_gib / PAPER_DEVICE_GIB * PAPER_LAYERS_X_HIDDEN / max(1, layers * hidden)


# ---------------------------------------------------------------------------- all datasets
@dataclass(frozen=True)
class GlobalBatch:
    """Rows of one global batch: ``world_size × per_device`` example indices of one dataset."""

    dataset: int
    bucket: int
    examples: np.ndarray
    per_device: int


class TrainData:
    """All datasets, the per-epoch batch plan, and collation of a rank's slice."""

    def __init__(self, datasets: list[TrainDataset], *, batch_sizes: dict[int, list[int]] | int, seed: int,
                 world_size: int = 1, drop_last: bool = True, pad_id: int = 1, shuffle_ratio: float = 0.0) -> None:
        if not datasets:
            raise DataError("no training data: give at least one jsonl file")
        self.datasets = datasets
        self.batch_sizes = batch_sizes
        self.seed = seed
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad_id = pad_id
        self.shuffle_ratio = shuffle_ratio
        self._plans: dict[int, list[GlobalBatch]] = {}

    def per_device_batch(self, dataset: int, bucket: int) -> int:
        if isinstance(self.batch_sizes, int):
            return self.batch_sizes
        return self.batch_sizes[dataset][bucket]

    def plan(self, epoch: int) -> list[GlobalBatch]:
        """Global batches of ``epoch`` in training order (same on every rank)."""
        if epoch in self._plans:
            return self._plans[epoch]
        batches: list[GlobalBatch] = []
        for d, ds in enumerate(self.datasets):
            buckets = bucket_of(ds.lengths) if not isinstance(self.batch_sizes, int) else np.zeros(len(ds), int)
            for b in np.unique(buckets):
                members = np.flatnonzero(buckets == b)
                per_dev = self.per_device_batch(d, int(b))
                size = per_dev * self.world_size
                rng = np.random.default_rng([self.seed, epoch, d, int(b)])
                order = members[rng.permutation(len(members))]
                for rows in _pack(order, ds, size, self.drop_last, self.world_size):
                    batches.append(GlobalBatch(d, int(b), rows, len(rows) // self.world_size))
        rng = np.random.default_rng([self.seed, epoch, 1 << 20])
        plan = [batches[i] for i in rng.permutation(len(batches))]
        if not plan:
            raise DataError("no complete batch: every dataset has fewer rows than one global batch "
                            f"(world size {self.world_size}); lower batch_size or set drop_last: false")
        self._plans = {epoch: plan}  # keep one epoch: plans of large data are big
        return plan

    def batches_per_epoch(self) -> int:
        return len(self.plan(0))

    def collate(self, epoch: int, index: int, rank: int = 0) -> TrainBatch:
        """Rank ``rank``'s micro-batch of global batch ``index`` of ``epoch``."""
        gb = self.plan(epoch)[index]
        ds = self.datasets[gb.dataset]
        rows = gb.examples[rank * gb.per_device : (rank + 1) * gb.per_device]
        q_seqs: list[np.ndarray] = []
        p_seqs: list[np.ndarray] = []
        teacher: list[list[float]] = []
        for ex_idx in rows:
            # per-example generator: the same draw whichever rank or resume point collates it
            rng = np.random.default_rng([self.seed, epoch, gb.dataset, int(ex_idx), 7])
            qi, pis, scores = ds.sample_group(int(ex_idx), rng)
            q_seqs.append(ds.query_ids[qi])
            for j, pi in enumerate(pis):
                seq = ds.passage_ids[pi]
                if j == 0 and self.shuffle_ratio > 0 and rng.random() < self.shuffle_ratio:
                    seq = _shuffled_passage(ds, pi, rng)
                p_seqs.append(seq)
            if scores is not None:
                teacher.append(scores)
        q_ids, q_mask = pad(q_seqs, self.pad_id)
        p_ids, p_mask = pad(p_seqs, self.pad_id)
        t = torch.tensor(teacher, dtype=torch.float32) if teacher else None
        return TrainBatch(q_ids, q_mask, p_ids, p_mask, ds.group_size, t, ds.name,
                          [ds.examples[int(i)].line for i in rows])


def _shuffled_passage(ds: TrainDataset, pi: int, rng: np.random.Generator) -> np.ndarray:
    """The reference's text shuffle: a positive over 100 characters cut in 3 chunks, shuffled, space-joined."""
    text = ds.passage_texts[pi]
    if len(text) <= 100:
        return ds.passage_ids[pi]
    n = len(text) // 3 + 1
    chunks = [text[i : i + n] for i in range(0, len(text), n)]
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    ids = ds.tokenizer.tokenize([" ".join(chunks)], max_length=ds.passage_max_len)[0]
    return np.asarray(ids, dtype=np.int32)


def _pack(order: np.ndarray, ds: TrainDataset, size: int, drop_last: bool, world: int) -> list[np.ndarray]:
    """Cut ``order`` into batches of ``size`` such that no two rows of a batch share a positive.

    Greedy: a row whose positive is already in the current batch waits in a queue and gets the
    first chance at the next batch, so the order changes only locally. With ``drop_last`` the
    rows that do not fill a last complete batch are left out of this epoch.
    """
    batches: list[np.ndarray] = []
    pending: deque[int] = deque()
    stream: deque[int] = deque(order.tolist())
    while pending or stream:
        cur: list[int] = []
        seen: set[int] = set()
        skipped: list[int] = []
        for source in (pending, stream):
            while source and len(cur) < size:
                i = source.popleft()
                pos = ds.examples[i].pos
                if seen.isdisjoint(pos):
                    cur.append(i)
                    seen.update(pos)
                else:
                    skipped.append(i)
        pending = deque(skipped) + pending
        if len(cur) < size:  # both sources drained: this is a last, partial batch
            if drop_last:
                break
            keep = len(cur) - len(cur) % world  # every rank needs the same number of rows
            if keep == 0:
                break
            pending = deque(cur[keep:]) + pending
            cur = cur[:keep]
        batches.append(np.array(cur, dtype=np.int64))
    return batches


def pad(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id arrays into ``input_ids`` and ``attention_mask`` ``[N, Lmax]`` (int64)."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    lmax = int(lens.max()) if len(lens) else 0
    arr = np.full((len(seqs), lmax), pad_id, dtype=np.int64)
    for r, s in enumerate(seqs):
        arr[r, : len(s)] = s
    mask = (np.arange(lmax)[None, :] < lens[:, None]).astype(np.int64)
    return torch.from_numpy(arr), torch.from_numpy(mask)


def load_datasets(paths: Sequence[str | Path], tokenizer: M3Tokenizer, *, query_max_len: int, passage_max_len: int,
                  query_instruction: str | None, query_instruction_format: str, need_scores: bool,
                  group_size: int) -> list[TrainDataset]:
    """One ``TrainDataset`` per file (a directory stands for its ``*.jsonl`` / ``*.jsonl.gz`` files, sorted)."""
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted([*path.glob("*.jsonl"), *path.glob("*.jsonl.gz")])
            if not found:
                raise DataError(f"{path}: directory holds no .jsonl or .jsonl.gz files")
            files.extend(found)
        else:
            files.append(path)
    return [TrainDataset(f, tokenizer, query_max_len=query_max_len, passage_max_len=passage_max_len,
                         query_instruction=query_instruction, query_instruction_format=query_instruction_format,
                         need_scores=need_scores, group_size=group_size) for f in files]
