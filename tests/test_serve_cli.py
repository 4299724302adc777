"""`m3embed serve` as a process: starts from the CLI, serves, and drains in-flight work on SIGTERM."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from helpers import tiny_checkpoint
from serve_common import free_port
from typer.testing import CliRunner

from m3embed import M3Model
from m3embed.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("scli"), seed=11)


def test_sigterm_finishes_queued_and_in_flight_requests(ckpt, tmp_path):
    port = free_port()
    keys = tmp_path / "keys.txt"
    keys.write_text("secret\n")
    # a 1.5 s batching window keeps the requests queued while SIGTERM arrives
    cmd = [sys.executable, "-m", "m3embed.cli", "serve", "--model", str(ckpt), "--port", str(port),
           "--max-wait-ms", "1500", "--max-batch-tokens", "100000", "--threads", "1", "--api-key-file", str(keys)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer secret"}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        groups = [[f"text {i}", f"another text number {i} " * (i + 1)] for i in range(6)]
        with cf.ThreadPoolExecutor(len(groups)) as pool:
            futs = [pool.submit(httpx.post, base + "/v1/embeddings", json={"input": g}, headers=auth, timeout=30)
                    for g in groups]
            deadline = time.monotonic() + 10
            while "m3embed_queue_depth 6.0" not in httpx.get(base + "/metrics", headers=auth).text:
                assert time.monotonic() < deadline, "requests did not queue"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futs]
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    model = M3Model.from_pretrained(ckpt)
    for g, r in zip(groups, results, strict=True):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], model.encode(g).dense, atol=1e-6)
    assert "model worker stopped" in out
    assert "rid=" in out  # access log lines carry the request id
    with pytest.raises(httpx.TransportError):
        httpx.get(base + "/health", timeout=2)


def test_cli_errors(ckpt, tmp_path, monkeypatch):
    r = runner.invoke(app, ["serve", "--model", str(ckpt), "--api-key-file", str(tmp_path / "missing.txt")])
    assert r.exit_code == 2 and "missing.txt" in r.output
    r = runner.invoke(app, ["serve", "--model", str(ckpt), "--max-queue", "0"])
    assert r.exit_code == 2 and "max_queue" in r.output
    import m3embed.cli.serve as serve_cli

    monkeypatch.setattr(serve_cli, "_missing_deps", lambda: ["fastapi"])
    r = runner.invoke(app, ["serve", "--model", str(ckpt)])
    assert r.exit_code == 2 and "pip install 'm3embed[serve]'" in r.output
