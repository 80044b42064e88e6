"""Two processes on this machine (CPU, loopback coordinator) train like one process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Plain SGD so that float-order differences of the all-reduce stay tiny (Adam's first
# step is lr·sign(g) and would magnify them).
OVERRIDES = ["--config.optim.name=sgd", "--config.optim.momentum=0.0",
             "--config.optim.lr=0.05", "--config.train.progress_bar=False"]


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cmd(workdir, data_dir, extra=()):
    return [sys.executable, "-m", "ferjax.main", "--config", "configs/synthetic.py:smoke",
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *OVERRIDES, *extra]


def _env(devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
    return env


def _train_losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_two_processes_match_one_process(tmp_path):
    data_dir = tmp_path / "data"
    single = tmp_path / "single"
    subprocess.run(_cmd(single, data_dir), cwd=ROOT, env=_env(2), check=True,
                   capture_output=True, timeout=600)
    multi = tmp_path / "multi"
    port = _free_port()
    procs = [subprocess.Popen(
        _cmd(multi, data_dir, ["--coordinator_address", f"localhost:{port}",
                               "--num_processes", "2", "--process_id", str(i)]),
        cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
    assert "process 1 of 2" in outputs[1]
    np.testing.assert_allclose(_train_losses(multi), _train_losses(single), rtol=2e-4)
    a = json.loads((single / "summary.json").read_text())
    b = json.loads((multi / "summary.json").read_text())
    assert np.asarray(a["confusion_matrix"]).sum() == np.asarray(b["confusion_matrix"]).sum()
