"""The loop end to end on the tiny synthetic config, resume, and sharded vs single device."""

import json
import logging
import os
import pathlib
import re
import struct
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ferjax import run_records, steps, train
from ferjax.checkpoint import Checkpointer, model_state
from ferjax.models import build_model, layers
from ferjax.metrics import HEADLINE
from ferjax.presets import load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg, data_dir):
    config = load_config_file(ROOT / "configs" / "synthetic.py", arg)
    config.data.data_dir = str(data_dir)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


def tensorboard_tags(directory: pathlib.Path) -> tuple[set[str], set[str]]:
    """The scalar and the image tags in a directory of TensorBoard event files (records:
    length u64, its crc u32, an Event proto, the proto's crc u32)."""
    from tensorboardX.proto.event_pb2 import Event
    scalars, images = set(), set()
    for path in directory.iterdir():
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = Event.FromString(data[12:12 + length])
            data = data[12 + length + 4:]
            for value in event.summary.value:
                (images if value.HasField("image") else scalars).add(value.tag)
    return scalars, images


@pytest.mark.parametrize("method", ["baseline", "rul_cbam", "mek", "mek_swin", "rlrcnet"])
def test_each_preset_trains_end_to_end(method, data_dir, tmp_path, monkeypatch,
                                       compiles_afresh):
    config = load_config(f"{method},smoke", data_dir)
    if method in ("rlrcnet", "mek_swin"):  # host batches at 24 px; the step resizes them
        config.data.host_image_size = 24   # to 32 (rlrcnet: both streams; mek_swin: bicubic)
    fast_to_global = train.to_global
    sides = set()

    def slow_to_global(batch, sharding):  # an input pipeline slower than the tiny steps
        sides.update(batch[k].shape[1] for k in ("image", "image_rev") if k in batch)
        time.sleep(0.3)
        return fast_to_global(batch, sharding)

    monkeypatch.setattr(train, "to_global", slow_to_global)
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == config.train.num_steps
    assert sides == {train.host_image_size(config.data)}  # train and eval batches
    assert 0.0 <= result["mean_class_accuracy"]["last"] <= 1.0
    assert set(result["per_class_accuracy"]) == {"surprise", "fear", "disgust", "happiness",
                                                 "sadness", "anger", "neutral"}
    for name in ("config.json", "summary.json", "confusion_matrix.png", "metrics.jsonl",
                 "evals.jsonl"):
        assert (tmp_path / name).exists(), name
    scalars, images = tensorboard_tags(tmp_path / "tensorboard")
    assert {"train/loss", "train/input_wait_fraction", "eval/accuracy",
            "eval/mean_class_accuracy", "eval/class_accuracy/fear"} <= scalars
    assert images == {"eval/confusion_matrix"}
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in x and np.isfinite(x["train/loss"]) for x in lines)
    # The first window holds the compilation; in the others the loop mostly waits for data.
    waits = [x["train/input_wait_fraction"] for x in lines if "train/input_wait_fraction" in x]
    assert len(waits) >= 3 and all(0.0 <= w <= 1.0 for w in waits)
    assert waits[0] < 0.5 < max(waits[1:])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]


def test_host_image_size_and_train_resize_have_defaults_and_name_a_bad_value():
    config = load_config("baseline,smoke", "unused")
    assert train.host_image_size(config.data) == config.data.image_size == 32
    config.data.host_image_size = 100
    assert train.host_image_size(config.data) == 100
    assert train.make_recipe(config).image_size == 32
    assert train.make_recipe(config).train_resize == "bilinear"
    config.data.train_resize = "nearest"
    with pytest.raises(ValueError, match=r"config\.data\.train_resize='nearest'.*'bicubic'"):
        train.make_recipe(config)
    config.data.train_resize = "bicubic"
    config.data.host_image_size = -1
    with pytest.raises(ValueError, match=r"config\.data\.host_image_size=-1"):
        train.make_recipe(config)
    config.data.host_image_size, config.data.image_size = 0, 0
    with pytest.raises(ValueError, match=r"config\.data\.image_size=0"):
        train.host_image_size(config.data)


def _params(workdir, config):
    model, optimizer = steps.make_model_and_optimizer(config, 7, 8, 6)
    Checkpointer(workdir).restore(model, optimizer)
    return jax.tree.leaves(model_state(model))


def test_resume_after_stop_reaches_the_same_parameters(data_dir, tmp_path, caplog):
    config = load_config("mek,smoke", data_dir)
    config.optim.schedule = "exponential"  # independent of the total step count
    straight = tmp_path / "straight"
    train.train_and_evaluate(config, str(straight))
    resumed = tmp_path / "resumed"
    first = ml_collections.ConfigDict(config.to_dict())
    first.train.num_steps = 3
    train.train_and_evaluate(first, str(resumed))
    with caplog.at_level(logging.WARNING, logger="ferjax"):
        result = train.train_and_evaluate(config, str(resumed))  # picks up at step 3
    assert result["step"] == 6
    # The one field that changed between the runs is named.
    assert "differs from the one it was trained with so far:\n  train.num_steps: 3 -> 6" \
        in caplog.text
    for a, b in zip(_params(straight, config), _params(resumed, config)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Rerunning the finished run says so and leaves its results as they were.
    kept = {name: (resumed / name).read_bytes() for name in ("summary.json", "evals.jsonl")}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ferjax"):
        again = train.train_and_evaluate(config, str(resumed))
    assert "is at step 6, at or past this config's 6 steps: nothing left to train" \
        in caplog.text
    assert again["step"] == 6 and again["accuracy"] == result["accuracy"]
    assert {name: (resumed / name).read_bytes() for name in kept} == kept


def test_config_changes_name_changed_fields_only():
    config = load_config("mek,smoke", "data")
    saved = json.loads(config.to_json_best_effort())
    assert run_records.config_changes(saved, config) == []
    saved["train"]["batch_size"] = 8
    saved["loss"]["terms"] = {"rsl": 1.0}
    del saved["optim"]["lr"]  # a workdir from before a field existed
    assert run_records.config_changes(saved, config) == [
        f"loss.terms: {{'rsl': 1.0}} -> {{'rac': {config.loss.terms.rac}, 'rsl': 1.0}}",
        "train.batch_size: 8 -> 16"]


def random_batch() -> dict:
    """8 random uint8 32 px images with labels (a fixed draw)."""
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 7, 8).astype(np.int32)}


def one_step(config, devices, batch):
    """(metrics, model after it) of one train step of `config` on `devices`, from the
    config's initial parameters."""
    mesh = steps.make_mesh(devices)
    model, optimizer = steps.replicated_model_and_optimizer(config, mesh, 7, 8, 6)
    with jax.set_mesh(mesh):
        step, state, write_back = steps.make_train_step(train.make_recipe(config), model,
                                                        optimizer)
        state, metrics = step(state, steps.to_global(batch, NamedSharding(mesh, P("data"))),
                              jnp.int32(0), jax.random.key(0), jnp.float32(1.0), jnp.ones(7),
                              jnp.ones(7))
        write_back(state)
    return metrics, model


def step_values(config, devices, batch) -> tuple[dict, list]:
    """`one_step` as plain values: ({metric: float}, the model's arrays after the step)."""
    metrics, model = one_step(config, devices, batch)
    return ({k: float(v) for k, v in metrics.items()},
            [np.asarray(x) for x in jax.tree.leaves(model_state(model))])


def test_sharded_step_matches_single_device(data_dir):
    config = load_config("rul_cbam,smoke", data_dir)
    # Without CBAM, whose step compiles for longest: what sharding can get wrong is the
    # mixing across the batch (and BN statistics); CBAM's gates work per image.
    config.model.cbam_placement = "none"
    # Plain SGD: Adam's first step is lr·sign(g), which turns float noise in ~0 gradients
    # into ±lr differences and would hide what this test checks.
    config.optim.name = "sgd"
    config.optim.momentum = 0.0
    batch = random_batch()
    assert len(jax.devices()) == 4
    # Also in 2 parts of 4 (gradient accumulation): RUL pairs within a part, BatchNorm
    # takes each part's statistics, and each part is spread over the 4 devices.
    for microbatches in (1, 2):
        config.train.microbatches = microbatches
        results = []
        for devices in (jax.devices()[:1], jax.devices()[:4]):
            metrics, model = one_step(config, devices, batch)
            results.append((float(metrics["loss"]),
                            [np.asarray(x) for x in jax.tree.leaves(model_state(model))]))
        np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
        for a, b in zip(results[0][1], results[1][1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The running averages that the parts updated inside the step were kept.
    initial = steps.make_model_and_optimizer(config, 7, 8, 6)[0]
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
        jax.tree.leaves(nnx.state(model, nnx.BatchStat)),
        jax.tree.leaves(nnx.state(initial, nnx.BatchStat)))]
    assert len(moved) > 10 and min(moved) > 1e-4


def test_microbatches_sum_to_the_whole_batch_gradient(data_dir):
    """Without batch statistics (Swin: LayerNorm, no BatchNorm; stochastic depth off) and
    with per-sample mean losses (MEK's RSL and RAC), a batch run as 2 parts on 4 devices
    takes the same step as the whole batch on one."""
    config = load_config("mek_swin,smoke", data_dir)
    config.model.update(drop_path=0.0, embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    config.optim.name = "sgd"
    config.optim.momentum = 0.0
    results = []
    for microbatches, devices in ((1, jax.devices()[:1]), (2, jax.devices()[:4])):
        config.train.microbatches = microbatches
        results.append(step_values(config, devices, random_batch()))
    (whole, whole_params), (parts, parts_params) = results
    assert whole.keys() == parts.keys() >= {"loss", "loss/rsl", "loss/rac", "train_accuracy"}
    for name, value in whole.items():
        assert parts[name] == pytest.approx(value, rel=1e-5), name
    assert whole["grad_norm"] > 0.1  # the step moved the parameters
    for a, b in zip(whole_params, parts_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_microbatches_must_divide_the_batch_over_the_devices():
    config = load_config("rul_cbam,smoke", "unused")  # batch 16
    config.train.microbatches = 3
    with pytest.raises(ValueError, match=r"config\.train\.microbatches=3 .*batch_size=16"):
        train.make_recipe(config)
    config.train.microbatches, config.loss.mix_group_size = 2, 16
    with pytest.raises(ValueError, match=r"mix_group_size=16 .*microbatches=2 = 8"):
        train.make_recipe(config)
    config.train.microbatches, config.loss.mix_group_size = 8, 0
    with pytest.raises(ValueError, match=r"microbatches=8 parts does not divide over 4 dev"):
        train.make_plan(config)


@pytest.mark.parametrize("method", ["rul_cbam", "mek"])
def test_bfloat16_step_agrees_with_float32(method, data_dir):
    """bf16 compute (as on GPU and TPU) through mixing, CAMs and the losses: each loss term
    within 2 % of the float32 step's, from the same parameters and batch. (rul_cbam without
    CBAM: its bf16 step compiles for 30 s here, and the gates are plain convolutions.)"""
    terms = []
    for dtype in ("float32", "bfloat16"):
        config = load_config(f"{method},smoke", data_dir)
        config.model.dtype = dtype
        config.model.cbam_placement = "none"
        metrics, _ = one_step(config, jax.devices()[:1], random_batch())
        terms.append({k: float(v) for k, v in metrics.items() if k.startswith("loss")})
    assert terms[0].keys() == terms[1].keys() and len(terms[0]) >= 2 - (method == "rul_cbam")
    for name, value in terms[0].items():
        assert np.isfinite(terms[1][name]), name
        assert terms[1][name] == pytest.approx(value, rel=0.02, abs=1e-3), name


@pytest.mark.parametrize("method", ["mek", "rlrcnet"])
def test_accelerator_ops_take_the_step_of_the_cpu_fast_paths(method, data_dir, monkeypatch):
    """The step as a GPU or TPU runs it (XLA's own convolutions, pools and depthwise
    convolutions, no fences) equals the step of the CPU forms, from the same parameters and
    batch: loss terms, gradient norm and updated parameters. mek: ResNet-18 at 32 px, maps
    down to 1 px (Winograd, shifted views, the max pool); rlrcnet: ShuffleNetV2's depthwise
    convolutions in both branches."""
    results = []
    for fast in (True, False):
        monkeypatch.setattr(layers, "cpu_fast_paths", lambda: fast)
        config = load_config(f"{method},smoke", data_dir)
        config.optim.name, config.optim.momentum = "sgd", 0.0
        batch = random_batch()
        if method == "rlrcnet":  # the reversed sampler's stream
            batch.update(image_rev=batch["image"][::-1].copy(), label_rev=batch["label"][::-1])
        results.append(step_values(config, jax.devices()[:1], batch))
    (cpu, cpu_params), (accelerator, accelerator_params) = results
    assert cpu.keys() == accelerator.keys() and cpu["grad_norm"] > 0.1
    for name, value in cpu.items():
        assert accelerator[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    for a, b in zip(cpu_params, accelerator_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_nonfinite_loss_stops_before_writing_a_checkpoint(data_dir, tmp_path):
    config = load_config("baseline,smoke", data_dir)
    config.optim.lr = float("nan")
    with pytest.raises(train.NonFiniteLossError, match="at step 1"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_with_on_nonfinite_skip_bad_steps_are_rolled_back_counted_and_capped(data_dir,
                                                                             tmp_path, caplog):
    config = load_config("baseline,smoke", data_dir)
    config.optim.lr = float("nan")  # every update would make the parameters NaN
    config.train.on_nonfinite, config.train.max_nonfinite_steps = "skip", 3
    config.train.num_steps = config.train.eval_every_steps = config.train.log_every_steps = 3
    with caplog.at_level(logging.WARNING, logger="ferjax"):
        result = train.train_and_evaluate(config, str(tmp_path / "skip"))
    assert "skipped 3 non-finite steps so far (first at step 1)" in caplog.text
    assert result["step"] == 3 and result["nonfinite_steps"] == 3
    # Every update was discarded: the saved model is the initial one, BatchNorm included.
    assert os.listdir(tmp_path / "skip" / "checkpoints") == ["3"]
    initial, _ = steps.make_model_and_optimizer(config, 7, 1, 3)
    for a, b in zip(jax.tree.leaves(model_state(initial)), _params(tmp_path / "skip", config)):
        np.testing.assert_array_equal(a, b)
    config.train.max_nonfinite_steps = 2
    with pytest.raises(train.NonFiniteLossError,
                       match=r"3 steps had NaN/Inf loss \(first at step 1\), more than "
                             r"config.train.max_nonfinite_steps=2"):
        train.train_and_evaluate(config, str(tmp_path / "capped"))


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_checkpoint_from_another_model_is_a_clear_error(data_dir, tmp_path):
    config = load_config("baseline,smoke", data_dir)
    config.train.num_steps = 3
    train.train_and_evaluate(config, str(tmp_path))
    other = ml_collections.ConfigDict(config.to_dict())
    other.model.width = 16
    with pytest.raises(ValueError, match=r"does not fit this model .*: \S+ has shape \([\d, ]+\) "
                                         r"in the checkpoint, \([\d, ]+\) here.*\n.*model.width: "
                                         r"8 -> 16"):
        train.train_and_evaluate(other, str(tmp_path))


def test_without_a_terminal_progress_is_logged_as_lines(data_dir, tmp_path, caplog, capsys,
                                                       monkeypatch):
    """pytest's stderr is no terminal, as a log file or a cloud job's console is not: no tqdm
    bar, but a line per (here: every) log window with loss, rate and time left, from the
    second window on (the first holds the compilation)."""
    monkeypatch.setattr(train, "PROGRESS_LINE_EVERY_S", 0.0)
    config = load_config("baseline,smoke", data_dir)
    config.train.num_steps, config.train.eval_every_steps = 8, 8  # windows end at 2, 4, 6, 8
    config.train.profile_steps = 2  # and a profiler trace of steps 2 and 3
    with caplog.at_level(logging.INFO, logger="ferjax"):
        train.train_and_evaluate(config, str(tmp_path))
    assert f"profile of steps 2-3 in {tmp_path / 'profile'}" in caplog.text
    runs = list((tmp_path / "profile" / "plugins" / "profile").iterdir())
    assert len(runs) == 1 and {p.suffix for p in runs[0].iterdir()} >= {".pb", ".gz"}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" ")[1] for line in lines] == ["4/8", "6/8", "8/8"]
    assert re.fullmatch(r"step 6/8 \(epoch 0\.75\): loss \d+\.\d{4}  train accuracy [\d.]+ %  "
                        r"[\d.]+ steps/s \(\d+ images/s\)  input wait \d+ %  about \d+ s left",
                        lines[1]), lines[1]
    assert lines[2].endswith("about 0 s left")
    means = dict(loss=0.5, train_accuracy=0.7, steps_per_second=10.0, images_per_second=640.0,
                 input_wait_fraction=0.03)
    assert train._progress_line(5, 90_000, 62, means, 5 * 3600 + 12 * 60 + 30).endswith(
        "about 5 h 12 min left")
    assert train._progress_line(5, 90_000, 62, means, 65).endswith("about 1 min 05 s left")
    assert "step/s" not in capsys.readouterr().err  # tqdm's rate unit: no bar was drawn


def test_on_a_terminal_progress_is_a_bar_and_evaluations_print_above_it(
        data_dir, tmp_path, caplog, capsys, monkeypatch):
    from ferjax import console
    monkeypatch.setattr(console, "interactive", lambda: True)
    config = load_config("baseline,smoke", data_dir)
    config.train.num_steps, config.train.eval_every_steps = 4, 2
    config.train.progress_bar = True  # the smoke configs turn it off
    with caplog.at_level(logging.INFO, logger="ferjax"):
        train.train_and_evaluate(config, str(tmp_path))
    err = capsys.readouterr().err
    # tqdm's bar: its name, the count, the rate in steps and the last window's train
    # accuracy, input wait and loss.
    final = re.findall(r"train: 100%\|.*?\| 4/4 \[[^\]]*\]", err)
    assert final and re.search(r"(step/s|s/step), ", final[-1]), err
    for shown in (r"acc=\d\.\d{3}", r"input_wait=\d+%", r"loss=\d+\.\d{3}"):
        assert re.search(shown, final[-1]), final[-1]
    # Evaluation lines go through the bar (printed above it), not to the log; no step lines.
    assert re.search(r"eval step 2 \(epoch 0\.25\): accuracy [\d.]+ %  mean class accuracy "
                     r"[\d.]+ %", err), err
    assert not [r for r in caplog.records if r.getMessage().startswith(("step ", "eval step"))]


class _TwoLayers(nnx.Module):
    def __init__(self, width: int, extra: bool = False):
        rngs = nnx.Rngs(0)
        self.first = nnx.Linear(3, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, rngs=rngs)
        if extra:
            self.second = nnx.Linear(width, 2, rngs=rngs)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_checkpoint_mismatch_names_the_parameters_before_reading_any(tmp_path):
    """The checkpoint's metadata is compared with the model first: the error names the
    parameter and both shapes (or the side that lacks it), and no array read is started."""
    def optimizer(model, tx=optax.adam(1e-3)):
        return nnx.Optimizer(model, tx, wrt=nnx.Param)

    saved = _TwoLayers(4)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, saved, optimizer(saved))
    wider = _TwoLayers(8)
    with pytest.raises(ValueError) as error:
        ckpt.restore(wider, optimizer(wider))
    assert str(error.value).endswith(
        "does not fit this model (was it written with another model config?): first/bias has "
        "shape (4,) in the checkpoint, (8,) here; first/kernel has shape (3, 4) in the "
        "checkpoint, (3, 8) here; norm/bias has shape (4,) in the checkpoint, (8,) here "
        "(and 3 more)")
    with pytest.raises(ValueError, match="second/bias is not in the checkpoint; second/kernel"):
        ckpt.restore(_TwoLayers(4, extra=True))
    same = _TwoLayers(4)
    with pytest.raises(ValueError, match=r"does not fit this optimizer .*opt_state/0/mu/first/"
                                         r"bias is only in the checkpoint"):
        ckpt.restore(same, optimizer(same, optax.sgd(0.1)))
    restored_model = _TwoLayers(4)
    restored_model.first.kernel[...] = 0
    assert ckpt.restore(restored_model, optimizer(restored_model)) == 1
    np.testing.assert_array_equal(restored_model.first.kernel[...], saved.first.kernel[...])
    ckpt.close()


def test_loss_weight_vectors_give_absent_classes_zero():
    # CK+-like: class 1 never trains; the counts array may also stop short of K.
    weights, rebalance = train.loss_weight_vectors(np.array([10, 0, 5]), 4, "none")
    np.testing.assert_allclose(weights, [1, 0, 1, 0])
    np.testing.assert_allclose(rebalance, [15 / 100, 0, 15 / 50, 0])  # N / (10 n_k)


def test_final_splits_report_last_and_best_after_selecting_on_holdout(data_dir, tmp_path,
                                                                     monkeypatch):
    """Select on a held-out part, report on test: 'last' is the model after the last step,
    'best' the best/ checkpoint, each as `ferjax.evaluate` would score it. Tracking test at
    every evaluation gives the same two scores."""
    from ferjax import evaluate
    config = load_config("baseline,smoke", data_dir)
    config.data.holdout_fraction = 0.25
    config.data.eval_split = "holdout"
    config.eval.final_splits = "test, holdout"
    config.eval.track_splits = "test"
    save_if_best = Checkpointer.save_if_best  # keep step 3 as the best, so best != last
    monkeypatch.setattr(Checkpointer, "save_if_best", lambda self, step, *a: step == 3 and
                        save_if_best(self, step, *a))
    result = train.train_and_evaluate(config, str(tmp_path))
    finals = json.loads((tmp_path / "summary.json").read_text())["final_splits"]
    assert set(finals) == {"test", "holdout"} and set(finals["test"]) == {"last", "best"}
    for which, checkpoint in (("last", "latest"), ("best", "best")):
        alone = evaluate.evaluate_workdir(str(tmp_path), "test", checkpoint)
        assert finals["test"][which]["confusion_matrix"] == alone["confusion_matrix"]
        assert finals["test"][which]["step"] == alone["checkpoint_step"] == (
            6 if which == "last" else 3)
    assert finals["test"]["last"]["confusion_matrix"] != finals["test"]["best"][
        "confusion_matrix"]
    # The last holdout evaluation of the loop is the final 'last' one.
    assert finals["holdout"]["last"]["confusion_matrix"] == result["confusion_matrix"]
    tracked = result["tracked_splits"]["test"]
    for which, final in (("last", "last"), ("at_best", "best")):
        assert {k: finals["test"][final][k] for k in ("step", *HEADLINE)} == tracked[which]
    records = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert all(set(r["tracked"]) == {"test"} for r in records)
    scalars, images = tensorboard_tags(tmp_path / "tensorboard")
    assert {"final/test/best/mean_class_accuracy", "eval_test/mean_class_accuracy",
            "eval/mean_class_accuracy"} <= scalars
    assert {"eval/confusion_matrix", "eval_test/confusion_matrix"} <= images
    assert all((tmp_path / f"confusion_matrix_{split}_{which}.png").read_bytes()[:4] ==
               b"\x89PNG" for split in ("test", "holdout") for which in ("last", "best"))
    # A split the dataset lacks, or tracking the selection split, fails before training.
    for field, value, error in (("final_splits", "tset", "config.eval.final_splits has 'tset'"),
                                ("track_splits", "holdout", "config.eval.track_splits has "
                                 "'holdout', which is config.data.eval_split")):
        bad = config.copy_and_resolve_references()
        bad.eval[field] = value
        with pytest.raises((KeyError, ValueError), match=error):
            train.train_and_evaluate(bad, str(tmp_path / "again"))
        assert not (tmp_path / "again" / "checkpoints").exists()


def test_flip_average_is_the_mean_of_image_and_mirror(data_dir):
    config = load_config("baseline,smoke", data_dir)
    model = nnx.view(build_model(config.model, num_classes=7, image_size=32, rngs=nnx.Rngs(0)),
                     deterministic=True, use_running_average=True, raise_if_not_found=False)
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    plain = steps.class_probabilities(model, x)
    mirrored = steps.class_probabilities(model, x[:, :, ::-1])
    both = steps.class_probabilities(model, x, flip_average=True)
    np.testing.assert_allclose(both, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the model is not flip-invariant
    symmetric = jnp.concatenate([x[:, :, :16], x[:, :, :16][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(steps.class_probabilities(model, symmetric, True),
                               steps.class_probabilities(model, symmetric), atol=1e-6)


def test_evaluations_since_best_counts_after_the_first_maximum():
    history = [{"mean_class_accuracy": v} for v in (0.1, 0.3, 0.2, 0.3)]
    assert run_records.evaluations_since_best(history) == 2  # a tie is no new best
    assert run_records.evaluations_since_best(history[:2]) == 0
    assert run_records.evaluations_since_best([]) == 0


def test_early_stop_saves_reports_and_stays_stopped_on_rerun(data_dir, tmp_path, monkeypatch,
                                                             caplog):
    # Here every evaluation after the first counts as one without a new best.
    monkeypatch.setattr(run_records, "evaluations_since_best", lambda history: len(history) - 1)
    config = load_config("baseline,smoke", data_dir)
    config.train.num_steps = 12
    config.train.eval_every_steps = 2
    config.train.checkpoint_every_steps = 100  # only the stop writes a checkpoint
    config.train.early_stop_patience = 2
    result = train.train_and_evaluate(config, str(tmp_path))
    assert (result["step"], result["early_stopped"]) == (6, True)  # evaluations at 2, 4, 6
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6"]
    from ferjax import summarize
    assert summarize.load_run(str(tmp_path))["finished"]
    with caplog.at_level(logging.WARNING, logger="ferjax"):
        again = train.train_and_evaluate(config, str(tmp_path))
    assert again["step"] == 6 and "stopped early at step 6" in caplog.text


def test_resume_skips_a_damaged_checkpoint_and_drops_records_it_redoes(data_dir, tmp_path,
                                                                      caplog):
    """A run killed after evaluating step 4 but before checkpointing it, and one whose step-4
    checkpoint lost its files: both resume from step 2 without duplicate records; the
    damaged checkpoint is moved to set_aside/, not deleted."""
    import shutil
    config = load_config("baseline,smoke", data_dir)
    config.train.num_steps = 4
    config.train.eval_every_steps = 2
    killed, damaged = tmp_path / "killed", tmp_path / "damaged"
    train.train_and_evaluate(config, str(killed))
    shutil.copytree(killed, damaged)
    shutil.rmtree(killed / "checkpoints" / "4")
    for f in (damaged / "checkpoints" / "4" / "model").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.unlink()
    config.train.num_steps = 6
    for workdir in (killed, damaged):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ferjax"):
            train.train_and_evaluate(config, str(workdir))
        assert "resumed at step 2" in caplog.text
        assert "evals.jsonl: dropped 1 records after step 2" in caplog.text
        evals = [json.loads(line)["step"] for line in
                 (workdir / "evals.jsonl").read_text().splitlines()]
        assert evals == [2, 4, 6]
        logged = [json.loads(line)["step"] for line in
                  (workdir / "metrics.jsonl").read_text().splitlines()]
        assert logged == [2, 2, 4, 4, 6, 6]  # train and eval scalars; none after 2 twice
        assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
        starts = [json.loads(line) for line in
                  (workdir / "starts.jsonl").read_text().splitlines()]
        assert [s["start_step"] for s in starts] == [0, 2]  # one line per (re)start
        assert starts[-1]["packages"]["jax"] == jax.__version__
        assert starts[-1]["devices"] == f"{jax.device_count()} x cpu"
        commit = starts[-1]["ferjax_commit"]  # None when the source is not a git checkout
        assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
    assert "checkpoints/4 cannot be read: its files are damaged or missing" in caplog.text
    assert (damaged / "set_aside" / "checkpoints" / "4" / "model").is_dir()


def test_a_redone_evaluation_that_scores_higher_replaces_the_best_checkpoint(tmp_path):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    ckpt = Checkpointer(str(tmp_path))
    try:
        assert ckpt.save_if_best(4, model, optimizer, {"mean_class_accuracy": 0.5})
        assert not ckpt.save_if_best(4, model, optimizer, {"mean_class_accuracy": 0.5})
        model.bias[...] = jnp.ones(3)  # a resumed run reaches step 4 with another model
        assert ckpt.save_if_best(4, model, optimizer, {"mean_class_accuracy": 0.6})
        model.bias[...] = jnp.zeros(3)
        assert ckpt.restore(model, which="best") == 4
        np.testing.assert_array_equal(model.bias[...], np.ones(3))
    finally:
        ckpt.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_resume_sets_aside_a_checkpoint_whose_files_are_deleted_or_truncated(tmp_path, damage,
                                                                           caplog):
    """Orbax reports a missing data file as NOT_FOUND but a truncated one as a bare Exception
    wrapping FAILED_PRECONDITION; both are damage, not a model that does not fit. The reads
    orbax abandoned must not print "Event loop is closed" tracebacks (an error here)."""
    model = nnx.Sequential(*[nnx.Linear(64, 64, rngs=nnx.Rngs(i)) for i in range(8)])
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    ckpt = Checkpointer(str(tmp_path))
    try:
        ckpt.save(1, model, optimizer)
        ckpt.save(2, model, optimizer)
        data_files = [f for f in (tmp_path / "checkpoints" / "2").rglob("*")
                      if f.is_file() and f.parent.name == "d"]
        assert data_files
        for f in data_files:
            if damage == "deleted":
                f.unlink()
            else:
                data = f.read_bytes()
                f.write_bytes(data[:len(data) // 2])
        with caplog.at_level(logging.WARNING, logger="ferjax"):
            assert ckpt.resume(model, optimizer) == 1
        assert "checkpoints/2 cannot be read: its files are damaged or missing" in caplog.text
        assert (tmp_path / "set_aside" / "checkpoints" / "2").is_dir()
        assert ckpt.latest_step() == 1
    finally:
        ckpt.close()
