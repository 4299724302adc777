"""The ``m3embed train`` command: a config plus overrides trains and writes the model; bad input exits 2."""

from __future__ import annotations

import pytest
from train_common import one_thread, write_tiny_train_set  # noqa: F401  (one_thread: autouse fixture)
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_tiny_train_set(tmp_path_factory.mktemp("cli"))


def test_cli_train_and_bad_data(setup, tmp_path):
    from m3embed.cli import app

    root, ckpt = setup
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {ckpt}\ntrain_data: [{root / 'train.jsonl'}]\ngroup_size: 3\nbatch_size: 2\n"
                   "plot: true\nprogress: false\n")
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(cfg), "--output-dir", str(tmp_path / "out"), "--set", "max_steps=1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "loss.png").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "pos": ["p"], "neg": ["n"]}\n{"query": "q2", "neg": ["n"]}\n')
    res = runner.invoke(app, ["train", str(cfg), "--output-dir", str(tmp_path / "o2"), "--train-data", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:2: missing 'pos'" in " ".join(res.output.split())
    res = runner.invoke(app, ["train", str(cfg), "--set", "output_dir=x", "--set", "nonsense=1"])
    assert res.exit_code == 2 and "unknown option 'nonsense'" in res.output
