"""Two processes on this machine (CPU, loopback coordinator), each started by
launch/gpu.sh as on the nodes of a multi-node job, train like one process; and
launch/tpu_vm.sh issues the right gcloud commands (against a stand-in gcloud)."""

import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys

import numpy as np

from tests.test_reliability import _wait_for

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
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               FERJAX_COMPILATION_CACHE="")
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
    # Each process through the multi-node launcher: launch/gpu.sh CONFIG WORKDIR [flags].
    launcher = ["bash", "launch/gpu.sh", "configs/synthetic.py:smoke", str(multi),
                f"--config.data.data_dir={data_dir}", *OVERRIDES]
    procs = [subprocess.Popen(
        launcher, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**_env(1), "PYTHON": sys.executable, "COORDINATOR": f"localhost:{port}",
             "NUM_PROCESSES": "2", "PROCESS_ID": str(i)})
        for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
    assert "process 1 of 2" in outputs[1]
    np.testing.assert_allclose(_train_losses(multi), _train_losses(single), rtol=2e-4)
    a = json.loads((single / "summary.json").read_text())
    b = json.loads((multi / "summary.json").read_text())
    assert np.asarray(a["confusion_matrix"]).sum() == np.asarray(b["confusion_matrix"]).sum()


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    """Preemption reaches the hosts of a pod at different moments; the processes agree on
    one step to save at and stop together instead of one waiting forever for the other."""
    workdir, port = tmp_path / "run", _free_port()
    subprocess.run([sys.executable, "-m", "ferjax.data.build", "--dataset", "synthetic_fer",
                    "--config", "tiny", "--data_dir", str(tmp_path / "data")], cwd=ROOT,
                   env=_env(1), check=True, capture_output=True, timeout=300)
    endless = ["--config.train.num_steps=100000", "--config.train.eval_every_steps=100000",
               "--config.train.checkpoint_every_steps=10", "--config.train.log_every_steps=5"]
    procs = [subprocess.Popen(
        _cmd(workdir, tmp_path / "data", [*endless, "--coordinator_address", f"localhost:{port}",
                                          "--num_processes", "2", "--process_id", str(i)]),
        cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    try:
        _wait_for(workdir / "checkpoints" / "10", *procs)
        procs[1].send_signal(signal.SIGTERM)   # only the second process is told
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
    stopped = [re.findall(r"stopped at step (\d+)", out) for out in outputs]
    assert stopped[0] and stopped[0] == stopped[1], stopped   # both, at the same step
    step = int(stopped[0][0])
    assert step % 5 == 0   # a step where the processes compare their flags
    saved = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved == step


def test_tpu_vm_launcher_commands(tmp_path):
    """launch/tpu_vm.sh against a stand-in gcloud that logs its arguments: creates the TPU
    VM when it does not exist, copies the code to every worker and starts one training
    process per host with the data and workdir on GCS; the remote script is valid bash."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.jsonl"
    fake = bin_dir / "gcloud"
    fake.write_text(f"""#!{sys.executable}
import json, sys, tarfile
args = sys.argv[1:]
if "scp" in args:  # what was shipped: the repository, whatever the caller's directory
    args.append(sorted(n for n in tarfile.open(args[4]).getnames() if n.endswith(".py")))
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
sys.exit(1 if "describe" in sys.argv else 0)   # the TPU VM does not exist yet
""")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TPU_NAME": "fer",
           "ZONE": "us-central2-b", "ACCELERATOR": "v4-16", "DATA": "gs://b/ferjax_datasets",
           "WORKDIR": "gs://b/runs/mek"}
    subprocess.run(["bash", str(ROOT / "launch" / "tpu_vm.sh"), "configs/rafdb.py:mek",
                    "--config.train.batch_size=128", "--config.eval.final_splits=test, holdout"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert [c[:4] for c in calls] == [["compute", "tpus", "tpu-vm", verb]
                                       for verb in ("describe", "create", "scp", "ssh")]
    create, scp, ssh = calls[1:]
    assert create[create.index("--accelerator-type") + 1] == "v4-16"
    assert scp[4].endswith("ferjax.tgz") and scp[5] == "fer:~/" and "--worker=all" in scp
    assert {"./ferjax/main.py", "./configs/rafdb.py"} <= set(scp[-1])
    assert "--worker=all" in ssh
    remote = ssh[ssh.index("--command") + 1]
    assert 'gcloud storage rsync -r "gs://b/ferjax_datasets" ~/ferjax_datasets' in remote
    assert ('python -m ferjax.main --config "configs/rafdb.py:mek" --workdir "gs://b/runs/mek" '
            '--distributed') in remote
    assert shlex.split(remote.rstrip().splitlines()[-1])[-2:] == [
        "--config.train.batch_size=128", "--config.eval.final_splits=test, holdout"]
    subprocess.run(["bash", "-n", "-c", remote], check=True)  # syntax only
