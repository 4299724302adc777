"""Faster CPU inference for :class:`~m3embed.model.M3Model`: fused fp32, bf16 and int8 encoders.

``model.optimize(precision)`` (or ``M3Model.from_pretrained(..., precision=...)``) attaches a
fast inference path for the encoder. It is used by ``encode``, ``compute_score`` and anything
else that goes through ``M3Model.hidden_states`` on CPU with autograd off; with gradients on, or
on another device, the plain transformers forward runs as before. The three heads (dense,
sparse, ColBERT) always run in float32.

``precision``:

* ``"fp32"`` — the same float32 math in fewer, fused oneDNN kernels: one Q/K/V matmul, bias,
  GELU and residual add inside the matmul epilogue, no bias broadcast copy. Outputs stay within
  ~1e-5 of the plain forward. Encoder weights are shared, except Q/K/V (concatenated copy).
* ``"bf16"`` — encoder weights and activations in bfloat16 (heads float32). Fast on CPUs with
  native bf16 dot products (AVX512-BF16 as on AMD Zen 4, or AMX); *slower* than fp32 on
  AVX-512 CPUs without them. Dense cosine vs fp32 ≈ 0.9999. Converts the backbone in place.
* ``"int8"`` — dynamic int8 (VNNI): every encoder matmul runs as int8 × int8 → int32
  (``torch._int_mm``) with per-token activation scales and per-output-channel weight scales.
  The attention projections use two int8 terms for their weights (``w ≈ s·q₁ + s/256·q₂``),
  which keeps dense cosine vs fp32 ≥ 0.999 on XLM-R-base-shaped random weights; the FFN uses
  one. The float32 encoder weights are kept (``save_pretrained`` still saves the originals).

Only BERT-style encoders (XLM-RoBERTa / RoBERTa / BERT: post-LN, absolute positions, GELU) are
supported; :func:`optimize` raises ``ValueError`` for anything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .model import M3Model

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

_SUPPORTED_TYPES = {"xlm-roberta", "roberta", "bert", "camembert"}
# int8: rows (tokens) quantised, multiplied and dequantised per chunk, so that the int8 / int32
# temporaries stay in cache instead of streaming [tokens, 3072] tensors through memory
_INT8_CHUNK_ROWS = 512


def optimize(model: M3Model, precision: Precision = "fp32") -> M3Model:
    """Attach the fast CPU inference path of ``precision`` to ``model`` (in place) and return it.

    ``model`` must be float32 on CPU; call ``optimize`` after moving or casting it. Calling it
    again replaces the previous fast path (``"bf16"`` converts the backbone to bfloat16: a later
    ``"fp32"`` or ``"int8"`` casts it back, so it runs on the bf16-rounded weights). Raises
    ``ValueError`` for an unknown precision, a non-fp32 / non-CPU model or an unsupported encoder,
    and ``RuntimeError`` when this torch build lacks the kernels (oneDNN, or ``torch._int_mm`` on
    CPU for int8).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    check_supported(model.backbone)
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise ValueError(f"optimize() needs a float32 model on CPU, got {model.dtype} on {model.device}")
    if precision != "bf16" and model.backbone.dtype != torch.float32:
        model.backbone.float()  # after an earlier optimize("bf16"): back to fp32 (on bf16-rounded weights)
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("the fast CPU path needs a torch build with oneDNN (mkldnn)")
    if precision == "int8":
        _check_int_mm()
    if precision == "bf16":
        model.backbone.to(torch.bfloat16)
    # not a registered submodule: stays out of state_dict(), parameters() and .to()
    object.__setattr__(model, "_accel", FastEncoder(model.backbone, precision))
    return model


def check_supported(backbone: nn.Module) -> None:
    """Raise ``ValueError`` unless ``backbone`` is a post-LN BERT-style encoder this module handles."""
    cfg = backbone.config
    problems = []
    if cfg.model_type not in _SUPPORTED_TYPES:
        problems.append(f"model_type {cfg.model_type!r}")
    if getattr(cfg, "hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {cfg.hidden_act!r} (only exact 'gelu')")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {cfg.position_embedding_type!r}")
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        problems.append("decoder / cross-attention")
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if layers is None or not hasattr(backbone, "embeddings"):
        problems.append("no embeddings / encoder.layer")
    else:
        for layer in layers:
            try:
                _ = (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                     layer.attention.output.dense, layer.attention.output.LayerNorm,
                     layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)
            except AttributeError:
                problems.append("unexpected layer structure")
                break
    if problems:
        raise ValueError("accel: unsupported encoder: " + ", ".join(problems))


def _check_int_mm() -> None:
    try:
        a = torch.ones(4, 32, dtype=torch.int8)
        torch._int_mm(a, a.t().contiguous())
    except (RuntimeError, AttributeError) as e:
        raise RuntimeError(f"precision 'int8' needs torch._int_mm on CPU (torch >= 2.2): {e}") from e


# ---------------------------------------------------------------------------------- linear kernels
_linear_pointwise = None


def _lp():
    global _linear_pointwise
    if _linear_pointwise is None:
        _linear_pointwise = torch.ops.mkldnn._linear_pointwise
    return _linear_pointwise


class _DenseLinear:
    """fp32 / bf16 ``x @ w.T + b`` through oneDNN, with GELU or a residual add fused in."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight = weight.detach().contiguous()
        self.bias = bias.detach()

    def __call__(self, x: torch.Tensor, *, gelu: bool = False, residual: torch.Tensor | None = None):
        lp = _lp()
        if residual is not None:
            return lp.binary(x, residual, self.weight, self.bias, "add")
        if gelu:
            return lp(x, self.weight, self.bias, "gelu", [], "none")  # "none" = exact erf GELU
        return lp(x, self.weight, self.bias, "none", [], "")


class _Int8Linear:
    """Dynamic int8 ``x @ w.T + b``: per-token int8 activations, per-channel int8 weights.

    ``two_terms`` stores the weight as ``s·q₁ + (s/256)·q₂`` (q₂ quantises the rounding error of
    q₁) and costs a second int8 product: about 16-bit weight precision at 2× int8 cost.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, *, two_terms: bool) -> None:
        w = weight.detach().float()
        scale = w.abs().amax(1).clamp_min(1e-12) / 127
        q1 = torch.round(w / scale[:, None]).clamp_(-127, 127)
        terms = [q1]
        if two_terms:
            q2 = torch.round((w - q1 * scale[:, None]) / (scale[:, None] / 256)).clamp_(-127, 127)
            terms.append(q2)
        self.n_out = w.shape[0]
        self.two_terms = two_terms
        self.wt = torch.cat(terms).to(torch.int8).t().contiguous()  # [K, N·terms]
        self.scale = scale
        self.bias = bias.detach().float()

    def __call__(self, x: torch.Tensor, *, gelu: bool = False, residual: torch.Tensor | None = None):
        n = self.n_out
        out = torch.empty(x.shape[0], n, dtype=torch.float32)
        for r0 in range(0, x.shape[0], _INT8_CHUNK_ROWS):
            xc = x[r0 : r0 + _INT8_CHUNK_ROWS]
            # symmetric per-token scale: max |x| / 127 (amax and amin are much faster than abs().amax())
            s = torch.maximum(xc.amax(1, keepdim=True), xc.amin(1, keepdim=True).neg_()).clamp_min_(1e-12)
            s.div_(127)
            q = torch.div(xc, s).round_().to(torch.int8)
            y = torch._int_mm(q, self.wt)
            o = out[r0 : r0 + _INT8_CHUNK_ROWS]
            # int32 → float32 by copy_ then in-place scaling: 2× faster than mul(int32, float, out=)
            o.copy_(y[:, :n] if self.two_terms else y)
            if self.two_terms:
                o.add_(y[:, n:], alpha=1 / 256)
            o.mul_(self.scale).mul_(s).add_(self.bias)
            if gelu:
                torch._C._nn.gelu(o, out=o)
            if residual is not None:
                o.add_(residual[r0 : r0 + _INT8_CHUNK_ROWS])
        return out


# ---------------------------------------------------------------------------------- encoder
class _FastLayer:
    def __init__(self, layer: nn.Module, num_heads: int, precision: str) -> None:
        sa, ao = layer.attention.self, layer.attention.output
        w_qkv = torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]).detach()
        b_qkv = torch.cat([sa.query.bias, sa.key.bias, sa.value.bias]).detach()
        if precision == "int8":
            self.qkv = _Int8Linear(w_qkv, b_qkv, two_terms=True)
            self.attn_out = _Int8Linear(ao.dense.weight, ao.dense.bias, two_terms=True)
            self.ffn_in = _Int8Linear(layer.intermediate.dense.weight, layer.intermediate.dense.bias,
                                      two_terms=False)
            self.ffn_out = _Int8Linear(layer.output.dense.weight, layer.output.dense.bias, two_terms=False)
        else:
            self.qkv = _DenseLinear(w_qkv, b_qkv)
            self.attn_out = _DenseLinear(ao.dense.weight, ao.dense.bias)
            self.ffn_in = _DenseLinear(layer.intermediate.dense.weight, layer.intermediate.dense.bias)
            self.ffn_out = _DenseLinear(layer.output.dense.weight, layer.output.dense.bias)
        self.ln1, self.ln2 = ao.LayerNorm, layer.output.LayerNorm
        self.num_heads = num_heads

    def __call__(self, h: torch.Tensor, batch: int, length: int, mask: torch.Tensor | None) -> torch.Tensor:
        """``h``: ``[batch·length, H]`` hidden states → the layer's output, same shape."""
        hidden = h.shape[1]
        nh = self.num_heads
        qkv = self.qkv(h)
        q, k, v = qkv.view(batch, length, 3, nh, hidden // nh).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.transpose(1, 2).reshape(batch * length, hidden)
        h1 = self.attn_out(a, residual=h)
        h1 = F.layer_norm(h1, (hidden,), self.ln1.weight, self.ln1.bias, self.ln1.eps)
        h2 = self.ffn_out(self.ffn_in(h1, gelu=True), residual=h1)
        return F.layer_norm(h2, (hidden,), self.ln2.weight, self.ln2.bias, self.ln2.eps)


class FastEncoder:
    """The backbone's forward for right-padded batches, rebuilt from fused kernels (inference only)."""

    # default ``max_batch_tokens`` of ``encode`` for an optimised model: small batches keep
    # [tokens, 3072] activations near cache instead of streaming 200 MB tensors (batch 32 × 512
    # tokens): 4k tokens measured 1.2-2× less CPU time than 16k (1 thread); 2k a further +4-8 %
    # (bf16 / int8, with m3embed.cpu_alloc's malloc thresholds; fp32 unchanged, 2 threads)
    max_batch_tokens: int | None = 2048

    def __init__(self, backbone: nn.Module, precision: str) -> None:
        self.precision = precision
        self.embeddings = backbone.embeddings
        heads = backbone.config.num_attention_heads
        self.layers = [_FastLayer(layer, heads, precision) for layer in backbone.encoder.layer]

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 n_layers: int | None = None) -> torch.Tensor:
        """Last hidden states ``[B, L, H]`` in float32 (with ``n_layers``: the output of that many layers)."""
        batch, length = input_ids.shape
        h = self.embeddings(input_ids=input_ids)
        if self.precision == "int8":
            h = h.float()
        keep = attention_mask.bool()
        # boolean key mask, broadcast over heads and queries; None lets SDPA skip masking
        mask = None if bool(keep.all()) else keep[:, None, None, :]
        h = h.reshape(batch * length, -1)
        for layer in self.layers[:n_layers]:
            h = layer(h, batch, length, mask)
        return h.view(batch, length, -1).float()

    def __repr__(self) -> str:
        return f"FastEncoder(precision={self.precision!r}, layers={len(self.layers)})"
