"""Cross-device negatives: two gloo processes with B queries each equal one process with 2B."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from helpers import tiny_checkpoint
from train_common import WORDS, one_thread  # noqa: F401  (one_thread: autouse fixture)

from m3embed import M3Model
from m3embed.train.data import pad
from m3embed.train.losses import LossConfig, m3_loss

B, G = 2, 3
CASES = {  # name: (unified, gathered heads)
    "dense": (False, ("dense",)),
    "unified_all_gathered": (True, ("dense", "sparse", "colbert")),
}
PARAMS = ("backbone.embeddings.word_embeddings.weight", "backbone.encoder.layer.0.attention.self.query.weight",
          "colbert_linear.weight", "sparse_linear.weight")


def _make_batch(model: M3Model):
    g = torch.Generator().manual_seed(0)

    def texts(n, lo, hi):
        out = []
        for _ in range(n):
            k = int(torch.randint(lo, hi, (1,), generator=g))
            out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (k,), generator=g)))
        return out

    tok = model.tokenizer
    q = [torch.tensor(x).numpy() for x in tok.tokenize(texts(2 * B, 2, 6), max_length=12)]
    p = [torch.tensor(x).numpy() for x in tok.tokenize(texts(2 * B * G, 1, 20), max_length=24)]
    return q, p


def _run(model, q_seqs, p_seqs, unified, heads, gather=None, rank=0, world=1):
    from m3embed.train.batching import encode_reps

    pad_id = model.tokenizer.special.pad
    qi, qm = pad(q_seqs, pad_id)
    pi, pm = pad(p_seqs, pad_id)  # each rank pads to its own longest text: the gather re-pads
    model.zero_grad(set_to_none=True)
    q = encode_reps(model, qi, qm, unified=unified)
    p = encode_reps(model, pi, pm, unified=unified)
    out = m3_loss(q, p, G, LossConfig(temperature=0.05, unified=unified), self_distill=unified,
                  gather=gather, gather_heads=heads, rank=rank, world_size=world)
    out.backward.backward()
    return out.loss.item()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if n in PARAMS and p.grad is not None}


def _worker(rank: int, world: int, port: int, ckpt: str, out_dir: str) -> None:
    import torch.distributed as dist

    from m3embed.train.distributed import average_gradients, gather_reps

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = M3Model.from_pretrained(ckpt)
        model.eval()
        q, p = _make_batch(model)
        q_local, p_local = q[rank * B : (rank + 1) * B], p[rank * B * G : (rank + 1) * B * G]
        results = {}
        for name, (unified, heads) in CASES.items():
            loss = _run(model, q_local, p_local, unified, heads,
                        gather=lambda r, h: gather_reps(r, h, model.tokenizer.special.pad), rank=rank, world=world)
            average_gradients([p for p in model.parameters() if p.grad is not None], world)
            results[name] = (loss, _grads(model))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    ckpt = str(tiny_checkpoint(root / "ckpt"))
    # fork: the workers inherit the imported modules (spawn re-imports torch + transformers: ~10 s each here);
    # like DataLoader workers they run single-threaded
    ctx = mp.start_processes(_worker, args=(2, _free_port(), ckpt, str(root)), nprocs=2, join=False,
                             start_method="fork")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("gloo workers did not finish in 120 s")
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    model = M3Model.from_pretrained(ckpt)
    model.eval()
    q, p = _make_batch(model)
    single = {}
    for name, (unified, heads) in CASES.items():
        loss = _run(model, q, p, unified, heads)
        single[name] = (loss, _grads(model))
    return ranks, single


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_with_twice_the_batch(results, case):
    ranks, single = results
    loss1, grads1 = single[case]
    for rank in ranks:
        loss, grads = rank[case]
        assert loss == pytest.approx(loss1, rel=1e-5)
        assert grads.keys() == grads1.keys() and grads
        for k in grads1:
            torch.testing.assert_close(grads[k], grads1[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_cross_device_without_process_group_is_a_clear_error(tmp_path):
    from m3embed.train import DistributedError, M3Trainer, TrainConfig
    from m3embed.train.distributed import gather_reps
    from m3embed.train.losses import Reps

    cfg = TrainConfig(model="unused", train_data=["unused.jsonl"], output_dir=str(tmp_path),
                      negatives_cross_device=True)
    with pytest.raises(DistributedError, match=r"needs an initialised torch\.distributed process group.*torchrun"):
        M3Trainer(cfg)
    with pytest.raises(DistributedError, match="process group"):
        gather_reps(Reps(ids=torch.zeros(1, 2), mask=torch.ones(1, 2), dense=torch.zeros(1, 4)), ("dense",))
