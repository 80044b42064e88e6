"""What real runs meet: kills, preemption, interrupted saves, reproducibility, bad config."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ferjax import train
from tests.test_train import _params, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMING_KEYS = ("train/steps_per_second", "train/images_per_second",
               "train/input_wait_fraction")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A compilation cache the commands of this module share: the first to compile the
    smoke config's steps stores them, the others load them."""
    return tmp_path_factory.mktemp("compilation_cache")


def _cmd(workdir, data_dir, *extra):
    return [sys.executable, "-m", "ferjax.main", "--config", "configs/synthetic.py:smoke",
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
            "--config.optim.schedule=exponential", *extra]


def _env(compilation_cache=""):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", FERJAX_COMPILATION_CACHE=str(compilation_cache))
    return env


def _metrics(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _wait_for(path, *procs, timeout=300):
    """Waits until `path` exists while every process in `procs` is still running."""
    start = time.time()
    while not path.exists():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() - start < timeout, f"{path} did not appear"
        time.sleep(0.05)


LONG = ("--config.train.num_steps=60", "--config.train.eval_every_steps=20",
        "--config.train.checkpoint_every_steps=10", "--config.train.log_every_steps=5")


def test_sigkill_then_rerun_matches_an_uninterrupted_run(data_dir, tmp_path, cache):
    # The later runs take their compiled steps from the first run's compilation cache.
    straight = tmp_path / "straight"
    run = subprocess.run(_cmd(straight, data_dir, *LONG), cwd=ROOT, env=_env(cache),
                         check=True, capture_output=True, text=True, timeout=600)
    assert f"compilation cache: {cache}" in run.stderr
    assert any(p.name.startswith("jit_train_step-") for p in cache.iterdir())
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed, data_dir, *LONG), cwd=ROOT, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(killed / "checkpoints" / "20", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # A save cut short leaves only a temporary folder; it must not be taken for a checkpoint.
    partial = killed / "checkpoints" / "50.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "garbage").write_text("half written")
    # Resumed with grain workers the first part ran without: batch s still feeds step s.
    subprocess.run(_cmd(killed, data_dir, *LONG, "--config.data.num_workers=2"), cwd=ROOT,
                   env=_env(cache), check=True, capture_output=True, timeout=600)
    config = load_config("baseline,smoke", data_dir)
    for a, b in zip(_params(straight, config), _params(killed, config)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(data_dir, tmp_path,
                                                                    signum, cache):
    """Ctrl-C in a terminal reaches the whole process group: here with two grain workers,
    which leave it to the training process."""
    workdir = tmp_path / "run"
    ctrl_c = signum == signal.SIGINT
    workers = ("--config.data.num_workers=2",) if ctrl_c else ()
    proc = subprocess.Popen(_cmd(workdir, data_dir, *LONG, *workers), cwd=ROOT, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _wait_for(workdir / "checkpoints" / "10", proc)
    if ctrl_c:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "stopped at step" in out and f"after {signal.Signals(signum).name}" in out
    assert "KeyboardInterrupt" not in out
    saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert saved and saved[-1] < 60
    rerun = subprocess.run(_cmd(workdir, data_dir, *LONG), cwd=ROOT, env=_env(cache),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed at step {saved[-1]}" in rerun.stdout + rerun.stderr
    assert json.loads((workdir / "summary.json").read_text())["step"] == 60


def test_same_seed_gives_bit_identical_metrics_with_0_and_2_workers(data_dir, tmp_path):
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    runs = []
    for name, workers in (("a", 0), ("b", 0), ("c", 2)):
        config = load_config("mek,smoke", data_dir)
        config.data.num_workers = workers
        train.train_and_evaluate(config, str(tmp_path / name))
        runs.append((_metrics(tmp_path / name), (tmp_path / name / "evals.jsonl").read_text()))
    assert runs[0] == runs[1] == runs[2]


def test_batch_that_does_not_divide_over_devices_is_named(data_dir, tmp_path):
    config = load_config("baseline,smoke", data_dir)
    config.train.batch_size = 6  # 4 devices in the tests
    with pytest.raises(ValueError, match="config.train.batch_size=6 does not divide over 4"):
        train.train_and_evaluate(config, str(tmp_path))


def test_wrong_config_type_is_named(tmp_path):
    proc = subprocess.run(_cmd(tmp_path, tmp_path, "--config.train.batch_size=many"),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "batch_size" in proc.stderr
