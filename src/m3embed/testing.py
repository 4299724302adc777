"""Seeded random checkpoints in the BAAI/bge-m3 layout, for tests, golden files and benchmarks.

Weights come from NumPy's PCG64 seeded per tensor name, so the same arguments give the same
checkpoint on any torch / transformers version (the golden files depend on it).
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch


def build_random_checkpoint(
    directory: str | Path,
    tokenizer_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    ffn: int = 64,
    max_positions: int = 514,
    colbert_dim: int = -1,
    vocab_size: int = 250002,
    seed: int = 0,
    head_dtype: torch.dtype = torch.float16,
) -> Path:
    """Write an XLM-R encoder + heads + tokenizer to ``directory`` and return it.

    ``max_positions`` is ``max_position_embeddings`` (8194 = 8192 usable, as bge-m3). Heads are
    saved in ``head_dtype`` (fp16 like the real checkpoint). Linear weights are N(0, 1/fan_in)
    and embeddings N(0, 1), so that every layer mixes tokens and texts get distinct vectors
    (N(0, 0.02) leaves the [CLS] state nearly constant); heads are scaled so that sparse weights
    and ColBERT similarities are spread out.
    """
    from transformers import XLMRobertaConfig, XLMRobertaModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=max_positions, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu",
    )
    config.architectures = ["XLMRobertaModel"]
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in XLMRobertaModel(config).state_dict().items()}
    state = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("position_ids") or name.endswith("token_type_ids"):
            continue  # buffers, rebuilt by the model
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if "LayerNorm" in name and name.endswith("weight"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            arr = 0.02 * rng.standard_normal(shape)
        elif "embeddings" in name:
            arr = rng.standard_normal(shape)
        else:  # Linear [out, in]: unit-variance outputs, so attention and FFN change every token
            arr = rng.standard_normal(shape) / np.sqrt(shape[-1])
        state[name] = torch.from_numpy(arr.astype(np.float32))
    torch.save(state, directory / "pytorch_model.bin")
    cfg = config.to_dict()
    cfg["torch_dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))

    dim = hidden if colbert_dim <= 0 else colbert_dim
    rng = np.random.default_rng([seed, 7])
    colbert = {"weight": rng.standard_normal((dim, hidden)) / np.sqrt(hidden), "bias": 0.1 * rng.standard_normal(dim)}
    sparse = {"weight": rng.standard_normal((1, hidden)) / np.sqrt(hidden), "bias": 0.05 * rng.standard_normal(1)}
    for fname, head in (("colbert_linear.pt", colbert), ("sparse_linear.pt", sparse)):
        torch.save({k: torch.from_numpy(v.astype(np.float32)).to(head_dtype) for k, v in head.items()},
                   directory / fname)
    tok = Path(tokenizer_dir)
    for fname in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok / fname).exists():
            shutil.copyfile(tok / fname, directory / fname)
    return directory
