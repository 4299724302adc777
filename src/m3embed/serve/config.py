"""ServeConfig: every limit and batching knob of ``m3embed serve`` in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class ServeConfig:
    """Limits, batching and access settings of one server (see ``docs/serve.md`` for the table).

    Token counts include the special tokens; ``max_length`` is the default truncation length in
    tokens (``/encode`` may override it per request, up to the model's position limit).
    """

    # dynamic batching
    max_batch_tokens: int = 8192  # padded tokens per forward pass; also the real tokens one worker round takes
    max_batch_size: int = 256  # texts per forward pass
    # a worker round takes queued requests worth up to this many × max_batch_tokens tokens (at least one request):
    # larger rounds sort more texts by length (less padding) but every request of a round waits for all of it
    round_batches: int = 1
    max_wait_ms: float = 5.0  # how long an idle worker waits for more requests before running a round
    # back-pressure and limits
    max_queue: int = 256  # requests waiting for the model; more → 503 with Retry-After
    max_texts_per_request: int = 256  # inputs / pairs / queries per request (413 beyond)
    max_chars_per_text: int = 100_000  # characters per text (413 beyond)
    max_request_bytes: int = 8 * 1024 * 1024  # request body size (413 beyond)
    request_timeout_s: float = 60.0  # from arrival to result (504 beyond)
    retry_after_s: int = 1  # the Retry-After header of a 503
    max_length: int = 512  # default truncation length in tokens (texts longer than this are cut)
    max_k: int = 1000  # largest k of /search
    # identity and access
    model_name: str = "m3embed"  # reported in responses when a request names no model
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: no authentication
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers

    def __post_init__(self) -> None:
        positive = ("max_batch_tokens", "max_batch_size", "round_batches", "max_queue", "max_texts_per_request",
                    "max_chars_per_text", "max_request_bytes", "max_k")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ServeConfig.{name} must be a positive integer, got {v!r}")
        if self.max_length < 2:
            raise ValueError(f"ServeConfig.max_length must be >= 2, got {self.max_length}")
        if self.max_wait_ms < 0:
            raise ValueError(f"ServeConfig.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"ServeConfig.request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.retry_after_s < 0:
            raise ValueError(f"ServeConfig.retry_after_s must be >= 0, got {self.retry_after_s}")
        self.api_keys = tuple(self.api_keys)
        self.cors_origins = tuple(self.cors_origins)
        for i, k in enumerate(self.api_keys):
            if not isinstance(k, str) or not k:
                raise ValueError(f"ServeConfig.api_keys[{i}] must be a non-empty string")

    def describe(self) -> dict[str, object]:
        """The settings as a dict, API keys replaced by their count (for logs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_keys"}
        out["api_keys"] = len(self.api_keys)
        return out


def read_api_keys(path: str) -> tuple[str, ...]:
    """Keys from a file, one per line; blank lines and ``#`` comments are skipped.

    Raises ``ValueError`` naming the file when it holds no key or a key with inner whitespace.
    """
    keys: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if any(c.isspace() for c in key):
                raise ValueError(f"{path}:{lineno}: an API key may not contain whitespace")
            keys.append(key)
    if not keys:
        raise ValueError(f"{path}: no API key in the file (one key per line)")
    return tuple(keys)
