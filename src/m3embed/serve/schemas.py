"""Request and response bodies of the server (pydantic), with checks that name the field and index.

Request checks raise ``PydanticCustomError`` whose context carries ``param`` (``input[3]``,
``pairs[0][1]``) and the full ``message``; :mod:`.errors` turns them into OpenAI-shaped 400s.
Limits that depend on the server's configuration (texts per request, characters per text,
``max_length``, ``k``) are checked by the endpoints.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from ..index.search import MODES

MAX_WEIGHT = 1e6  # larger weights only overflow the fused scores; the scale does not change a ranking
SearchMode = Literal["dense", "sparse", "multivec", "dense+sparse", "all", "rrf"]


def type_name(v: object) -> str:
    """JSON-ish name of a value's type for error messages."""
    if v is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "bool", int: "int", float: "float"}.get(
        type(v), type(v).__name__)


def invalid(param: str, message: str) -> PydanticCustomError:
    """A validation error about ``param``; the message is prefixed with it."""
    return PydanticCustomError("invalid_value", "{message}", {"param": param, "message": f"{param}: {message}"})


def short(v: object, n: int = 40) -> str:
    """``repr(v)`` cut to ``n`` characters (error messages must stay small)."""
    r = repr(v)
    return r if len(r) <= n else r[: n - 1] + "…"


def _check_text(name: str, t: str) -> None:
    if not t:
        raise invalid(name, "must not be an empty string")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(name, "contains an unpaired surrogate (not valid Unicode)") from None


def check_texts(name: str, v: Any) -> str | list[str]:
    """A non-empty string or a non-empty list of non-empty strings (valid Unicode)."""
    if isinstance(v, str):
        _check_text(name, v)
        return v
    if not isinstance(v, list):
        raise invalid(name, f"expected a string or a list of strings, got {type_name(v)}")
    if not v:
        raise invalid(name, "must not be an empty list")
    for i, t in enumerate(v):
        if not isinstance(t, str):
            raise invalid(f"{name}[{i}]", f"expected a string, got {type_name(t)}")
        _check_text(f"{name}[{i}]", t)
    return v


def check_weights(v: Any) -> list[float] | None:
    """``[w_dense, w_sparse, w_colbert]``: three finite numbers >= 0 with a positive sum."""
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 3:
        got = f"{len(v)} values" if isinstance(v, list) else type_name(v)
        raise invalid("weights", f"expected 3 numbers [dense, sparse, colbert], got {got}")
    for i, w in enumerate(v):
        if isinstance(w, bool) or not isinstance(w, int | float):
            raise invalid(f"weights[{i}]", f"expected a number, got {type_name(w)}")
        if not math.isfinite(w) or not 0 <= w <= MAX_WEIGHT:
            raise invalid(f"weights[{i}]", f"must be a number from 0 to {MAX_WEIGHT:g}, got {short(w)}")
    if sum(v) <= 0:
        raise invalid("weights", "must not all be zero")
    return [float(w) for w in v]


Texts = str | list[str]
Weights = Annotated[list[float] | None, Field(description="[w_dense, w_sparse, w_colbert], each >= 0")]


# ---------------------------------------------------------------------------- requests
class _TextsRequest(BaseModel):
    """Validation shared by requests with texts in ``input`` and a dense ``encoding_format``."""

    # the fields are declared by the subclasses (their descriptions and defaults differ)
    @field_validator("input", mode="before", check_fields=False)
    @classmethod
    def _texts(cls, v: Any) -> Any:
        return check_texts("input", v)

    @field_validator("encoding_format", mode="before", check_fields=False)
    @classmethod
    def _fmt(cls, v: Any) -> Any:
        if v not in ("float", "base64"):
            raise invalid("encoding_format", f"expected 'float' or 'base64', got {short(v)}")
        return v


class EmbeddingsRequest(_TextsRequest):
    """``POST /v1/embeddings`` (OpenAI); unknown fields are ignored as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="allow")

    input: Texts = Field(description="A string or a list of strings (not token ids)")
    model: StrictStr | None = Field(None, description="Echoed in the response; any name is accepted")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes")
    dimensions: StrictInt | None = Field(None, description="Must equal the model's hidden size when given")
    user: StrictStr | None = None


class EncodeRequest(_TextsRequest):
    """``POST /encode``: any of dense / sparse / ColBERT for each text."""

    model_config = ConfigDict(extra="forbid")

    input: Texts
    dense: StrictBool = True
    sparse: StrictBool = False
    colbert: StrictBool = False
    sparse_tokens: StrictBool = Field(False, description="Also return {token text: weight} per text")
    encoding_format: Literal["float", "base64"] = Field("float", description="Dense vectors as floats or base64")
    colbert_dtype: Literal["float32", "float16"] = Field("float32", description="dtype of the base64 ColBERT arrays")
    max_length: StrictInt | None = Field(None, description="Tokens per text, specials included (truncates)")
    mcls: StrictBool = Field(False, description="A [CLS] every 256 tokens; dense = mean of their states")
    model: StrictStr | None = None

    @field_validator("colbert_dtype", mode="before")
    @classmethod
    def _cdt(cls, v: Any) -> Any:
        if v not in ("float32", "float16"):
            raise invalid("colbert_dtype", f"expected 'float32' or 'float16', got {short(v)}")
        return v


class ScoreRequest(BaseModel):
    """``POST /score``: the five ``compute_score`` scores of (query, passage) pairs."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = Field(
        description="[[query, passage], ...]")
    weights: Weights = Field(None, description="[w_dense, w_sparse, w_colbert], default [1, 1, 1]")
    max_query_length: StrictInt | None = None
    max_passage_length: StrictInt | None = None
    model: StrictStr | None = None

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise invalid("pairs", f"expected a list of [query, passage] pairs, got {type_name(v)}")
        if not v:
            raise invalid("pairs", "must not be an empty list")
        for i, p in enumerate(v):
            if not isinstance(p, list) or len(p) != 2:
                what = f"{len(p)} items" if isinstance(p, list) else type_name(p)
                raise invalid(f"pairs[{i}]", f"expected a [query, passage] pair of two strings, got {what}")
            for j, t in enumerate(p):
                if not isinstance(t, str):
                    raise invalid(f"pairs[{i}][{j}]", f"expected a string, got {type_name(t)}")
                _check_text(f"pairs[{i}][{j}]", t)
        return v

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        return check_weights(v)


class SearchRequest(BaseModel):
    """``POST /search``: top-k documents of the server's index per query."""

    model_config = ConfigDict(extra="forbid")

    queries: Texts = Field(description="A query or a list of queries")
    k: StrictInt = Field(10, description="Results per query (>= 1)")
    mode: SearchMode = Field("all", description=f"One of {', '.join(MODES)}")
    weights: Weights = Field(None, description="[w_dense, w_sparse, w_colbert], default [1, 0.3, 1]")
    max_length: StrictInt | None = Field(None, description="Query tokens, specials included")
    model: StrictStr | None = None

    @field_validator("queries", mode="before")
    @classmethod
    def _queries(cls, v: Any) -> Any:
        v = check_texts("queries", v)
        for i, t in enumerate([v] if isinstance(v, str) else v):
            if not t.strip():
                raise invalid("queries" if isinstance(v, str) else f"queries[{i}]", "must not be blank")
        return v

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise invalid("k", f"expected an integer, got {type_name(v)}")
        if v <= 0:
            raise invalid("k", f"must be a positive integer, got {v}")
        return v

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        if v not in MODES:
            raise invalid("mode", f"unknown mode {short(v)}; expected one of {', '.join(MODES)}")
        return v

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        return check_weights(v)


# ---------------------------------------------------------------------------- responses (documentation)
class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens fed to the model, special tokens included")
    total_tokens: int


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ColbertArray(BaseModel):
    dtype: Literal["float32", "float16"]
    shape: tuple[int, int] = Field(description="[tokens - 1, colbert_dim]: every real token but [CLS]")
    data: str = Field(description="base64 of the little-endian row-major array")


class EncodedText(BaseModel):
    index: int
    n_tokens: int
    dense: list[float] | str | None = None
    sparse: dict[str, float] | None = Field(None, description="token id (as a string) → weight")
    sparse_tokens: dict[str, float] | None = Field(None, description="token text → weight")
    colbert: ColbertArray | None = None


class EncodeResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EncodedText]
    model: str
    usage: Usage


class ScoreResponse(BaseModel):
    scores: dict[str, list[float]] = Field(
        description="colbert, sparse, dense, sparse+dense, colbert+sparse+dense: one float per pair")
    model: str
    usage: Usage


class Hit(BaseModel):
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    scores: dict[str, float] | None = None


class SearchResponse(BaseModel):
    results: list[list[Hit]]
    model: str
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
