"""The multi-process encode pool gives the single-process results, in order."""

import numpy as np
import pytest
from helpers import tiny_checkpoint

from m3embed import M3Model
from m3embed.pool import EncodePool


def test_two_cpu_workers_equal_single_process(tmp_path):
    model = M3Model.from_pretrained(tiny_checkpoint(tmp_path / "ck", colbert_dim=8, seed=4))
    texts = [f"text number {i} " + "word " * (i % 17) for i in range(41)]
    ref = model.encode(texts, return_sparse=True, return_colbert=True, batch_size=8)
    with EncodePool(model, ["cpu", "cpu"], threads_per_worker=1) as pool:
        out = pool.encode(texts, return_sparse=True, return_colbert=True, batch_size=8, timeout=120)
        np.testing.assert_allclose(out.dense, ref.dense, atol=1e-6)
        np.testing.assert_allclose(out.colbert.data, ref.colbert.data, atol=1e-6)
        np.testing.assert_array_equal(out.colbert.offsets, ref.colbert.offsets)
        for a, b in zip(out.lexical_weights, ref.lexical_weights, strict=True):
            assert a == pytest.approx(b, abs=1e-6)
        with pytest.raises(TypeError, match="index 4 is NoneType"):
            pool.encode(["a", "b", "c", "d", None, "e"], chunk_size=2, timeout=120)
        with pytest.raises(RuntimeError, match=r"chunk 1 \(texts 2…3\): ValueError: text at index 1 has"):
            pool.encode(["a", "b", "c", "word " * 50], chunk_size=2, max_length=16, truncation=False, timeout=120)
        assert len(pool.encode([], timeout=5)) == 0
