"""Tokenizer loading, input validation, the truncation policy and MCLS insertion.

We drive the `tokenizers` backend straight from ``tokenizer.json`` instead of
``transformers.AutoTokenizer``: transformers 5 rebuilds the XLM-R pipeline from its class
definition and drops the ``▁`` (id 6) the reference's fast tokenizer emits before ``</s>`` for
text ending in whitespace, so only the file's own pipeline gives the reference's ids on every
transformers version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")

#: Tokens between two inserted [CLS] in MCLS mode (paper, appendix B.2).
MCLS_STRIDE = 256


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens the heads treat specially."""

    cls: int
    eos: int
    pad: int
    unk: int

    @property
    def unused(self) -> frozenset[int]:
        """Ids the sparse head never reports (the reference's ``unused_tokens``)."""
        return frozenset((self.cls, self.eos, self.pad, self.unk))


class M3Tokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with the M3 truncation and MCLS rules."""

    def __init__(self, backend: Tokenizer, *, source: Path | None = None) -> None:
        self.backend = backend
        self.backend.no_truncation()
        self.backend.no_padding()
        self.source = source
        ids = {}
        named = _special_tokens_map(source)
        for name, keys, candidates in _SPECIALS:
            tokens = [named[k] for k in keys if k in named] + list(candidates)
            tid = next((t for t in map(backend.token_to_id, tokens) if t is not None), None)
            if tid is None:
                raise ValueError(f"tokenizer {source or ''}: no {name} token (tried {tokens})")
            ids[name] = tid
        self.special = SpecialIds(**ids)

    @classmethod
    def from_dir(cls, path: str | Path) -> M3Tokenizer:
        """Load ``tokenizer.json`` from a checkpoint or tokenizer directory."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(
                f"{path}: no tokenizer.json (a fast-tokenizer file is required; convert a SentencePiece "
                "model with transformers' XLMRobertaTokenizerFast(...).save_pretrained first)"
            )
        return cls(Tokenizer.from_file(str(file)), source=path)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` (and the configs, when the source had them) into ``directory``."""
        directory = Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        if self.source is not None:
            for name in TOKENIZER_FILES[1:]:
                src = self.source / name
                if src.is_file():
                    (directory / name).write_bytes(src.read_bytes())
        if not (directory / "special_tokens_map.json").exists():
            tok = self.backend.id_to_token
            sp = self.special
            (directory / "special_tokens_map.json").write_text(json.dumps({
                "bos_token": tok(sp.cls), "cls_token": tok(sp.cls), "eos_token": tok(sp.eos),
                "sep_token": tok(sp.eos), "pad_token": tok(sp.pad), "unk_token": tok(sp.unk),
            }))

    def decode_id(self, token_id: int) -> str:
        """The text of one token as ``tokenizer.decode([id])`` gives it (``▁`` dropped)."""
        return self.backend.decode([int(token_id)], skip_special_tokens=False)

    def tokenize(
        self,
        texts: Sequence[str],
        *,
        max_length: int,
        truncation: bool = True,
        mcls: bool = False,
    ) -> list[list[int]]:
        """Token ids of each text, ``<s> … </s>``, at most ``max_length`` ids each.

        Longer texts are cut (the reference's ``truncation=True``: keep the head, re-append
        ``</s>``) and counted in a log line; with ``truncation=False`` they raise ``ValueError``
        naming the first offending index. ``mcls=True`` inserts ``<s>`` at every multiple of
        ``MCLS_STRIDE`` positions; inserted tokens count toward ``max_length``.
        """
        check_texts(texts)
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for <s> and </s>), got {max_length}")
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=True) if texts else []
        out: list[list[int]] = []
        n_cut = 0
        for i, enc in enumerate(encodings):
            ids = enc.ids
            body = ids[1:]  # content + </s>
            limit = _mcls_body_limit(max_length) if mcls else max_length - 1
            if len(body) > limit:
                if not truncation:
                    need = len(body) + (_mcls_count(len(body)) if mcls else 1)
                    raise ValueError(
                        f"text at index {i} has {need} tokens, more than max_length={max_length}; "
                        "pass truncation=True to cut it or raise max_length"
                    )
                n_cut += 1
                body = [*body[: limit - 1], self.special.eos]
            out.append(_insert_mcls(body, self.special.cls) if mcls else [self.special.cls, *body])
        if n_cut:
            logger.info("truncated %d of %d texts to max_length=%d", n_cut, len(out), max_length)
        return out


# (field, keys in special_tokens_map.json, fallbacks): XLM-R names first, then BERT's
_SPECIALS = (
    ("cls", ("cls_token", "bos_token"), ("<s>", "[CLS]")),
    ("eos", ("sep_token", "eos_token"), ("</s>", "[SEP]")),
    ("pad", ("pad_token",), ("<pad>", "[PAD]")),
    ("unk", ("unk_token",), ("<unk>", "[UNK]")),
)


def _special_tokens_map(source: Path | None) -> dict[str, str]:
    """Special token strings declared in ``special_tokens_map.json`` (missing file → empty)."""
    if source is None or not (source / "special_tokens_map.json").is_file():
        return {}
    raw = json.loads((source / "special_tokens_map.json").read_text(encoding="utf-8"))
    return {k: v["content"] if isinstance(v, dict) else v for k, v in raw.items() if isinstance(v, str | dict)}


def _mcls_count(body_len: int) -> int:
    """Number of [CLS] tokens MCLS puts in front of ``body_len`` other tokens."""
    return -(-body_len // (MCLS_STRIDE - 1))


def _mcls_body_limit(max_length: int) -> int:
    """Largest body (content + ``</s>``) whose MCLS layout fits ``max_length`` tokens."""
    b = max_length - _mcls_count(max_length)
    while b + _mcls_count(b) > max_length:
        b -= 1
    while b + 1 + _mcls_count(b + 1) <= max_length:
        b += 1
    return b


def _insert_mcls(body: list[int], cls_id: int) -> list[int]:
    """``<s>`` at positions 0, 256, 512, …; the body fills the 255 slots between them."""
    step = MCLS_STRIDE - 1
    out: list[int] = []
    for start in range(0, max(len(body), 1), step):
        out.append(cls_id)
        out.extend(body[start : start + step])
    return out


def check_texts(texts: object) -> None:
    """Raise ``TypeError`` naming the first item that is not a ``str``.

    Empty and whitespace-only strings are accepted, as in the reference: ``""`` encodes as
    ``<s></s>`` (lexical weights ``{}``, one ColBERT row for ``</s>``).
    """
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a list of str, not a single str/bytes (wrap it in a list)")
    for i, t in enumerate(texts):  # type: ignore[union-attr]
        if not isinstance(t, str):
            raise TypeError(f"text at index {i} is {type(t).__name__}, expected str")
