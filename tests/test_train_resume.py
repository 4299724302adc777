"""Exact resume: N steps straight == N/2 steps, checkpoint, a new process state, N/2 more."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_checkpoint
from safetensors.torch import load_file
from train_common import WORDS, one_thread  # noqa: F401  (one_thread: autouse fixture)

from m3embed import M3Model
from m3embed.train import M3Trainer, TrainConfig, latest_checkpoint


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    ckpt = tiny_checkpoint(root / "ckpt")
    g = torch.Generator().manual_seed(0)

    def text(n):
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))

    with open(root / "train.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"query": f"{text(3)} {i}", "pos": [text(12)], "neg": [text(10) for _ in range(4)]})
                    + "\n")
    return root, ckpt


def _cfg(root, ckpt, out, **kw):
    # 6 batches per epoch, 2 micro-batches per step: 4 steps cross into the second epoch
    return TrainConfig(model=str(ckpt), train_data=[str(root / "train.jsonl")], output_dir=str(root / out),
                       group_size=3, batch_size=2, grad_accum=2, max_steps=4, learning_rate=5e-4, warmup_steps=1,
                       progress=False, plot=False, **kw)


def test_resume_reproduces_the_straight_run(setup):
    root, ckpt = setup
    straight = M3Trainer(_cfg(root, ckpt, "straight")).train()  # dropout on: RNG state must round-trip
    assert [h["step"] for h in straight.history] == [1, 2, 3, 4]
    assert straight.history[-1]["epoch"] == 1

    def stop_after_first_checkpoint(model, step):
        if step == 2:  # called at step 0 (eval_at_start) and after each checkpoint
            raise Stop

    with pytest.raises(Stop):
        M3Trainer(_cfg(root, ckpt, "split", save_steps=2), eval_fn=stop_after_first_checkpoint).train()
    first = latest_checkpoint(root / "split")
    assert first is not None and first.name == "checkpoint-2"
    resumed = M3Trainer(_cfg(root, ckpt, "split", save_steps=2, resume_from="latest"))
    assert (resumed.step, resumed.epoch, resumed.batch_index) == (2, 0, 4)
    result = resumed.train()
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]  # steps 1-2 reloaded from metrics.jsonl
    for a, b in zip(straight.history, result.history, strict=True):
        for key in ("loss", "dense", "sparse", "colbert", "ensemble", "skd_dense", "lr", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)
    wa, wb = load_file(root / "straight" / "model.safetensors"), load_file(root / "split" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6
    ha = torch.load(root / "straight" / "colbert_linear.pt", weights_only=True)
    hb = torch.load(root / "split" / "colbert_linear.pt", weights_only=True)
    torch.testing.assert_close(ha["weight"], hb["weight"], rtol=0, atol=1e-6)
    lines = (root / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]


def test_checkpoint_is_a_loadable_bge_m3_layout(setup):
    root, _ = setup
    ck = root / "straight" / "checkpoint-4"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt",
                 "trainer_state.pt", "rng_state_0.pt"):
        assert (ck / name).is_file(), name
    model = M3Model.from_pretrained(ck)
    final = M3Model.from_pretrained(root / "straight")
    for (n, a), (_, b) in zip(model.state_dict().items(), final.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=n)
    out = final.encode(["river stone"], return_sparse=True, return_colbert=True)
    assert out.dense.shape == (1, final.hidden_size)
    assert (root / "straight" / "train_config.yaml").is_file()
