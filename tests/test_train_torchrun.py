"""``torchrun --nproc-per-node 2 -m m3embed.cli train CONFIG.yaml`` on CPU (gloo), cross-device negatives on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from helpers import tiny_checkpoint
from train_common import word_texts

from m3embed import M3Model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    texts = word_texts(80, 5, 3, 14)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i} {texts[i][:15]}", "pos": [texts[20 + i]],
                                        "neg": texts[40 + 3 * i : 43 + 3 * i]}) + "\n" for i in range(12)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {ckpt}\ntrain_data: [{data}]\noutput_dir: {tmp_path / 'out'}\ngroup_size: 3\n"
                   "batch_size: 2\nmax_steps: 2\nsave_steps: 1\nnegatives_cross_device: true\n"
                   "cross_device_heads: [dense, colbert]\nsub_batch_size: 2\nprogress: false\nplot: false\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "m3embed.cli", "train", str(cfg)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "out"
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["samples"] == 2 for r in log)  # 2 queries per rank
    assert (out / "checkpoint-1" / "rng_state_1.pt").is_file()
    assert M3Model.from_pretrained(out).encode(["river"]).dense.shape == (1, 32)
