"""A workdir in cloud storage: everything ferjax writes besides checkpoints and TensorBoard
events lands in the bucket, not in a local folder named 'gs:' (a stand-in for GCS, fsspec's
in-memory filesystem under the gs:// scheme, as etils.epath reaches gcsfs)."""

import json
import os

import importlib
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from ferjax import files, metrics, run_records, summarize, workdir
from ferjax.presets import base_config

FSSPEC_REGISTRY = importlib.import_module("fsspec.registry")._registry  # (fsspec.registry
# is a read-only view of it)


class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, finalize_on_close=None, **kwargs):
        super().__init__(*args, **kwargs)


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    for scheme in ("gs", "gcs"):
        monkeypatch.setitem(FSSPEC_REGISTRY, scheme, FakeGCS)
    FakeGCS.store.clear()
    monkeypatch.chdir(tmp_path)  # a mangled URL would show up here as ./gs:/...
    yield "gs://bucket/runs/mek"
    assert not os.path.exists(tmp_path / "gs:")
    FakeGCS.store.clear()


def test_paths_keep_urls():
    assert files.absolute("gs://b/run") == "gs://b/run"
    assert files.join("gs://b/run/", "best") == "gs://b/run/best"
    assert files.absolute("run") == os.path.join(os.getcwd(), "run")


def test_a_run_s_records_go_to_the_bucket_and_read_back(bucket):
    config = base_config()
    names = ["surprise", "fear", "disgust"]
    run_records.write_config(config, bucket, names)
    assert workdir.class_names(bucket) == names
    assert workdir.load_config(bucket).loss.flip_bn == "joint"
    writer = metrics.MetricWriter(bucket, enable_tensorboard=False)
    for step in (2, 4, 6):
        writer.write_scalars(step, {"train/loss": 1.0 / step})
        run_records.append_evaluation(bucket, {"step": step, "accuracy": 0.1 * step,
                                               "mean_class_accuracy": 0.1 * step,
                                               "macro_f1": 0.05 * step})
    writer.close()
    # A run resumed from step 4 drops what came after it.
    history = run_records.rewind(bucket, 4)
    assert [h["step"] for h in history] == [2, 4]
    assert [json.loads(line)["step"] for line in files.read_text(
        f"{bucket}/metrics.jsonl").splitlines()] == [2, 4]
    cm = np.array([[3, 1, 0], [0, 2, 0], [1, 0, 4]])
    config.train.mean_of_last_k = 2
    result = run_records.final_summary(config, bucket, history, cm, names, 4, 6, False, [])
    assert result["accuracy"]["last"] == pytest.approx(0.4)
    assert files.read_text(f"{bucket}/summary.json").startswith("{")
    assert FakeGCS.store[f"{bucket}/confusion_matrix.png"].getvalue()[:4] == b"\x89PNG"
    assert summarize.load_run(bucket)["confusion_matrix"].tolist() == cm.tolist()
    assert sorted(k.rsplit("/", 1)[1] for k in FakeGCS.store) == [
        "classes.json", "config.json", "confusion_matrix.png", "evals.jsonl",
        "metrics.jsonl", "summary.json"]


def test_the_dry_run_finds_a_bucket_workdir_s_latest_checkpoint(bucket):
    from ferjax.plan import latest_checkpoint_step
    assert latest_checkpoint_step(bucket) is None
    for step in ("120", "60", "180.orbax-checkpoint-tmp-1"):
        files.write_text(f"{bucket}/checkpoints/{step}/_CHECKPOINT_METADATA", "{}")
    assert latest_checkpoint_step(bucket) == 120


def test_an_append_to_a_bucket_object_keeps_what_was_there(bucket):
    path = f"{bucket}/metrics.jsonl"
    first = files.LineLog(path)
    first.append("a")
    first.close()
    second = files.LineLog(path)  # a resumed run
    second.append("b")
    assert files.read_text(path) == "a\nb\n"


def test_a_data_dir_in_cloud_storage_says_to_copy_it_to_local_disk():
    from ferjax.data import build
    with pytest.raises(ValueError, match=r"ArrayRecord files cannot be read .*"
                                         r"gcloud storage rsync -r gs://b/datasets"):
        build.make_builder("synthetic_fer", data_dir="gs://b/datasets")


def test_a_busy_bucket_log_uploads_at_most_once_per_period_and_on_flush(bucket):
    path = f"{bucket}/metrics.jsonl"
    log = files.LineLog(path, upload_every_s=3600.0)
    log.append("a")  # the first line goes up at once
    log.append("b")
    log.append("c")
    assert files.read_text(path) == "a\n"
    log.flush()
    assert files.read_text(path) == "a\nb\nc\n"
    log.append("d")
    log.close()
    assert files.read_text(path) == "a\nb\nc\nd\n"


def test_a_profiler_trace_of_a_bucket_run_is_copied_into_it(bucket, caplog):
    import jax
    import jax.numpy as jnp

    from ferjax import profiling

    trace, step_fn, state = profiling.StepTrace(bucket, 1, 2), jax.jit(lambda x: x * 2), \
        jnp.ones(3)
    with caplog.at_level("INFO", logger="ferjax"):
        for step in range(4):  # the loop's calls; steps 2 and 3 (indices 1, 2) are traced
            trace.before_step(step, state)
            if step == 1:
                local = trace.local_dir
            state = step_fn(state)
            trace.after_step(step + 1, state)
        trace.close(step=4)
    assert f"profile of steps 2-3 in {bucket}/profile" in caplog.text
    stored = [key for key in FakeGCS.store if "/runs/mek/profile/plugins/profile/" in key]
    assert {os.path.splitext(key)[1] for key in stored} >= {".pb", ".gz"}
    assert not os.path.exists(local)  # the local copy is gone
    # A run with no step after its first says that it traced nothing.
    short = profiling.StepTrace(bucket, 1, 2)
    short.before_step(0, state)
    short.after_step(1, step_fn(state))
    with caplog.at_level("INFO", logger="ferjax"):
        short.close(step=1)
    assert "profile_steps=2: nothing was traced" in caplog.text
