"""Configs, the command-line entry points, evaluate and predict on a trained tiny workdir."""

import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ferjax import compilation_cache, evaluate, export, predict, presets, summarize, train
from ferjax import plan as plan_lib
from ferjax.data import build as build_lib
from ferjax.presets import METHODS, load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py"))


def load(name, arg=None):
    return load_config_file(ROOT / "configs" / name, arg)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("method", METHODS)
def test_every_config_builds_every_method(name, method):
    config = load(name, method)
    assert config.method == method
    train.make_recipe(config)  # forward and terms fit together; augment ops exist
    assert config.data.name
    assert "python -m ferjax.main --config configs/" in (ROOT / "configs" / name).read_text()


def test_main_help_names_every_preset():
    """`python -m ferjax.main --help` prints the module's docstring: it lists the presets."""
    from ferjax import main
    listed = re.search(r"presets ([\w, ]+) and (\w+);", " ".join(main.__doc__.split()))
    assert listed and set(re.split(r", ", listed[1])) | {listed[2]} == set(METHODS)


@pytest.mark.parametrize("module", [evaluate, export, predict, summarize, build_lib])
def test_each_command_help_shows_its_command_line_and_its_examples(module, capsys):
    """--help: `python -m <module>`, the docstring's summary, the options, then the rest of
    the docstring (examples) as written, shell line continuations included."""
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    name = module.__name__
    assert text.startswith(f"usage: python -m {name} ")
    summary, _, examples = module.__doc__.strip().partition("\n\n")
    assert text.index(summary) < text.index("options:") < text.index(examples)
    assert f"python -m {name} " in examples


def test_rafdb_mek_presets_carry_the_two_recipes_of_the_spec():
    """spec §3.7: the official code's (ε 0.3, λ 0.1) on EAC's ResNet-18 pipeline (lr 2e-4),
    and the second-hand ResNet-18 claim (ε 0.1, λ 2, Adam 1e-4), both batch 32, 60 epochs."""
    for method, (epsilon, lam, lr) in {"mek": (0.3, 0.1, 2e-4),
                                       "mek_claimed": (0.1, 2.0, 1e-4)}.items():
        c = load("rafdb.py", method)
        assert (c.loss.rsl_epsilon, dict(c.loss.terms), c.optim.lr) == (
            epsilon, {"rsl": 1.0, "rac": lam}, lr)
        assert (c.optim.name, c.optim.schedule, c.optim.decay_rate) == (
            "adam_l2", "exponential", 0.9)
        assert (c.train.batch_size, c.train.epochs, c.loss.forward) == (32, 60, "flip_pair")


def test_rafdb_mek_swin_preset_is_the_official_recipe():
    """spec §3.6-3.7: Swin-T at 112 px, AdamW 3.125e-5 (wd 0.05) warmed up over 2,000 steps
    from 3.125e-8, cosine to 3.125e-7 at 60,000 steps of batch 32, clip 5, eval every
    1,000; flip, RandAugment rand-m9-mstd0.5-inc1 with bicubic resampling and grey 128
    fill, (0.5, 0.5) normalisation, pixel-noise erasing at p 0.25."""
    from ferjax.optim import learning_rate_schedule
    c = load("rafdb.py", "mek_swin")
    assert (c.model.name, c.data.image_size, c.model.patch_size, c.model.drop_path) == (
        "swin_t", 112, 2, 0.1)
    assert (dict(c.loss.terms), c.loss.rsl_epsilon) == ({"rsl": 1.0, "rac": 0.1}, 0.3)
    assert (c.optim.name, c.optim.weight_decay, c.optim.clip_norm) == ("adamw", 0.05, 5.0)
    assert (c.train.batch_size, c.train.num_steps, c.train.eval_every_steps) == (32, 60_000,
                                                                                 1000)
    assert c.augment.ops == ("flip", "rand_augment", "normalize", "erase")
    assert c.augment.rand_augment.to_dict() == {
        "num_layers": 2, "magnitude": 9.0, "magnitude_std": 0.5, "magnitude_max": 10.0,
        "prob": 0.5, "increasing": True, "interpolation": "bicubic", "fill": (128, 128, 128),
        "translate_pct": 0.45}
    assert (c.augment.erase.prob, c.augment.erase.fill) == (0.25, "random")
    lr = learning_rate_schedule(c.optim, c.optim.lr, steps_per_epoch=384, total_steps=60_000)
    np.testing.assert_allclose([float(lr(0)), float(lr(2000)), float(lr(60_000))],
                               [3.125e-8, 3.125e-5, 3.125e-7], rtol=1e-4)


def test_unknown_method_or_config_argument_is_named():
    with pytest.raises(ValueError, match="unknown method 'mekk'"):
        load("rafdb.py", "method=mekk")
    # A misspelt argument must not fall back to a default (7 classes for 'clases=8').
    for arg, bad in [("mek,clases=8", "'clases=8'"), ("mekk", "'mekk'"), ("smoke", "'smoke'")]:
        with pytest.raises(ValueError, match=f"config argument {bad} not understood; this "
                                             "config takes method=..., classes=..."):
            load("affectnet.py", arg)
    assert load("affectnet.py", "rul_cbam,classes=8").data.config == "8"
    assert load("synthetic.py", "mek,smoke").train.num_steps == 6


def test_a_misspelt_config_field_is_named_with_the_closest_one():
    config = load("rafdb.py", "mek")
    presets.check_fields(config)
    config.train.bach_size = 32
    with pytest.raises(ValueError, match=r"config\.train\.bach_size is not a ferjax config "
                                         r"field \(did you mean 'batch_size'\?"):
        presets.check_fields(config)
    # Free-form parts: loss terms, and the parameters of listed augmentation ops.
    config = load("rafdb.py", "mek")
    config.loss.terms.my_term = 1.0
    config.augment.ops = (*config.augment.ops, "my_op")
    config.augment.my_op = ml_collections.ConfigDict({"strength": 2})
    presets.check_fields(config)
    config.augment.unused_op = ml_collections.ConfigDict({"strength": 2})
    with pytest.raises(ValueError, match=r"config\.augment\.unused_op"):
        presets.check_fields(config)
    # A known op's parameters are fields like any other: a typo there is named too.
    config = load("rafdb.py", "mek_swin")
    config.augment.rand_augment.magnitud = 5.0
    with pytest.raises(ValueError, match=r"config\.augment\.rand_augment\.magnitud is not a "
                                         r"ferjax config field \(did you mean 'magnitude'"):
        presets.check_fields(config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    workdir = tmp_path_factory.mktemp("run")
    config = load("synthetic.py", "baseline,smoke")
    config.data.data_dir = str(data_dir)
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_evaluate_writes_table_and_picture(trained, monkeypatch, caplog, capsys):
    monkeypatch.setattr(train, "PROGRESS_LINE_EVERY_S", 0.0)  # a line after every batch
    with caplog.at_level(logging.INFO, logger="ferjax"):
        result = evaluate.evaluate_workdir(str(trained), split="test", which="latest")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluating")]
    # 70 images in batches of 32: no line after the first (its pace includes compiling) or
    # the last.
    assert len(lines) == 1 and re.fullmatch(
        r"evaluating synthetic_fer/test: batch 2/3, about \d+ s left", lines[0]), lines
    out = pathlib.Path(result["output_dir"])
    assert (out / "confusion_matrix.png").exists() and (out / "per_class.txt").exists()
    assert np.asarray(result["confusion_matrix"]).sum() == 70  # every test image once
    assert "mean class" in (out / "per_class.txt").read_text()
    assert evaluate.main(["--workdir", str(trained), "--checkpoint", "999"]) == 1
    assert evaluate.main(["--workdir", str(trained), "--split", "tst"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --split has 'tst'; synthetic_fer has splits ['train', 'validation', "
        "'test', 'test_longtail'] (or 'holdout')")
    # Test-time flip: its own folder, every image still counted once.
    assert evaluate.main(["--workdir", str(trained), "--split", "test", "--checkpoint",
                          "latest", "--flip_average"]) == 0
    flipped = json.loads((trained / "eval_test_latest_flip" / "summary.json").read_text())
    assert flipped["flip_average"] and np.asarray(flipped["confusion_matrix"]).sum() == 70


def test_evaluate_on_another_dataset(trained, tmp_path, capsys):
    """Cross-dataset: the run's own dataset named as another gives the same matrix; an
    8-class image folder is matched by class, its contempt faces left out and counted."""
    config = json.loads((trained / "config.json").read_text())["data"]
    same = evaluate.evaluate_workdir(str(trained), split="test", which="latest",
                                     dataset=f"synthetic_fer:{config['config']}")
    assert same["confusion_matrix"] == evaluate.evaluate_workdir(
        str(trained), split="test", which="latest")["confusion_matrix"]
    assert pathlib.Path(same["output_dir"]).name.startswith("eval_synthetic_fer_")
    faces = tmp_path / "faces" / "test"
    for name, count in (("happy", 3), ("sad", 2), ("contempt", 4)):
        for i in range(count):
            (faces / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), np.uint8)
                            ).save(faces / name / f"{i}.png")
    build_lib.build("image_folder", config="8", manual_dir=str(tmp_path / "faces"),
                    data_dir=str(tmp_path / "data"))
    assert evaluate.main(["--workdir", str(trained), "--checkpoint", "latest", "--dataset",
                          "image_folder:8", "--data_dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "left out 4 images of classes the model does not have" in out
    result = json.loads((trained / "eval_image_folder_8_test_latest" / "summary.json"
                         ).read_text())
    cm = np.asarray(result["confusion_matrix"])
    assert cm.shape == (7, 7) and cm.sum(1).tolist() == [0, 0, 0, 3, 2, 0, 0]
    assert result["dataset"] == "image_folder" and result["left_out_images"] == 4
    # A dataset that is not built says how to build it.
    assert evaluate.main(["--workdir", str(trained), "--dataset", "rafdb", "--data_dir",
                          str(tmp_path / "none")]) == 1
    assert "python -m ferjax.data.build --dataset rafdb" in capsys.readouterr().err


def test_another_dataset_s_classes_are_matched_to_the_model_s_by_name():
    from ferjax.data.labels import CANONICAL_CLASSES
    from ferjax.data.sources import Split
    eight = Split(list(range(5)), np.array([0, 7, 3, 7, 6]), tuple(CANONICAL_CLASSES[:8]))
    kept, left_out = evaluate.matched_to_model(eight, list(CANONICAL_CLASSES[:7]))
    assert kept.labels.tolist() == [0, 3, 6] and left_out == 2  # contempt left out
    renamed = Split(list(range(5)), eight.labels, ("calm", *CANONICAL_CLASSES[1:8]))
    with pytest.raises(ValueError, match=r"the dataset's classes \['calm', .*\] do not match "
                                         r"the model's \['surprise', "):
        evaluate.matched_to_model(renamed, list(CANONICAL_CLASSES[:7]))


def test_evaluate_a_weights_file_without_a_training_run(trained, tmp_path, monkeypatch,
                                                        capsys):
    """`--weights` + `--config`: the trained run's weights exported to a file and evaluated
    alone give the run's own confusion matrix; a file that does not fit names the keys."""
    from ferjax.models.pretrained import export_state_dict
    from ferjax.workdir import restore_model

    _, model, _, _ = restore_model(str(trained), "latest")
    np.savez(tmp_path / "released.npz", **export_state_dict(model))
    data_dir = json.loads((trained / "config.json").read_text())["data"]["data_dir"]
    monkeypatch.setenv("FERJAX_DATA_DIR", data_dir)  # where the config's dataset was built
    args = ["--workdir", str(tmp_path / "out"), "--config",
            str(ROOT / "configs" / "synthetic.py:baseline,smoke"), "--split", "test"]
    assert evaluate.main([*args, "--weights", str(tmp_path / "released.npz")]) == 0
    result = json.loads((tmp_path / "out" / "eval_test_weights_released.npz" / "summary.json"
                         ).read_text())
    assert result["weights"].endswith("released.npz")
    assert result["confusion_matrix"] == evaluate.evaluate_workdir(
        str(trained), split="test", which="latest")["confusion_matrix"]
    np.savez(tmp_path / "other.npz", **{"fc.weight": np.zeros((3, 8), np.float32)})
    capsys.readouterr()
    assert evaluate.main([*args, "--weights", str(tmp_path / "other.npz")]) == 1
    assert "missing" in capsys.readouterr().err
    no_config = ["--workdir", str(tmp_path), "--weights", "w.npz"]
    and_a_checkpoint = [*args, "--weights", "w.npz", "--checkpoint", "latest"]
    for wrong in (no_config, and_a_checkpoint):
        with pytest.raises(SystemExit):
            evaluate.main(wrong)


def test_predict_prints_a_class_per_image(trained, tmp_path, capsys):
    paths = []
    for i, mode in enumerate(("RGB", "L", "RGB")):
        p = tmp_path / "faces" / f"face{i}.{'png' if i < 2 else 'JPG'}"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (50, 40, 3), np.uint8)
                        ).convert(mode).save(p, format="PNG" if i < 2 else "JPEG")
        paths.append(str(p))
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    results = list(predict.predict_files(str(trained), paths))
    assert [r["file"] for r in results] == paths
    for r in results:
        assert r["prediction"] in r["probabilities"]
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
    # Batches of 2 (the last one padded) give what one batch gives.
    for r, s in zip(results, predict.predict_files(str(trained), paths, batch_size=2)):
        assert r["probabilities"] == pytest.approx(s["probabilities"], abs=1e-5)
    # A folder is searched for images; an unreadable one is reported in its place (here
    # after a batch of 3 had two images waiting).
    broken = tmp_path / "faces" / "face1b.png"
    broken.write_bytes(b"not a png")
    jsonl = tmp_path / "out.jsonl"
    assert predict.main(["--workdir", str(trained), "--batch_size", "3", "--jsonl", str(jsonl),
                         str(tmp_path / "faces")]) == 1
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [pathlib.Path(r["file"]).name for r in lines] == [
        "face0.png", "face1.png", "face1b.png", "face2.JPG"]
    assert "face1b.png" in lines[2]["error"] and "prediction" in lines[3]
    out = capsys.readouterr()
    assert out.out.count(": ") == 3 and "1 of 4 images could not be read" in out.err
    assert predict.main(["--workdir", str(trained), str(tmp_path / "missing.png")]) == 1
    assert "image not found" in capsys.readouterr().err


def test_a_workdir_missing_its_records_or_checkpoints_is_named(trained, tmp_path):
    from ferjax.workdir import restore_model
    workdir = tmp_path / "copy"
    workdir.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{workdir}/config.json not found: is "
                                                f"{workdir} a ferjax training workdir"):
        restore_model(str(workdir))
    shutil.copy(trained / "config.json", workdir)
    with pytest.raises(FileNotFoundError, match="classes.json not found: the workdir has no "
                                                "record of its classes"):
        restore_model(str(workdir))
    shutil.copy(trained / "classes.json", workdir)
    with pytest.raises(FileNotFoundError, match=f"no checkpoint in {workdir} \\('best'\\)"):
        restore_model(str(workdir))  # 'best' falls back to 'latest', which is missing too


def test_commands_take_the_compilation_cache_flag(trained, tmp_path, monkeypatch, capsys):
    folders = []
    monkeypatch.setattr(compilation_cache, "use", folders.append)
    assert evaluate.main(["--workdir", str(trained), "--checkpoint", "999",
                          "--compilation_cache", str(tmp_path / "a")]) == 1
    monkeypatch.setenv("FERJAX_COMPILATION_CACHE", str(tmp_path / "b"))
    assert predict.main(["--workdir", str(trained), str(tmp_path / "missing.png")]) == 1
    assert folders == [str(tmp_path / "a"), str(tmp_path / "b")]
    monkeypatch.undo()
    # Off, or not writable: the cache stays off and says why, the command goes on.
    assert compilation_cache.use("") == "compilation cache: off"
    (tmp_path / "file").write_text("")
    assert "not writable" in compilation_cache.use(str(tmp_path / "file" / "cache"))


def test_summarize_means_folds_and_pools_their_confusion_matrices(trained, tmp_path, capsys):
    """Two 'folds' (the trained workdir's summary and a copy with other numbers), an
    unfinished run and a missing one: mean, sample std and the pooled matrix by hand."""
    real = json.loads((trained / "summary.json").read_text())
    names = list(real["per_class_accuracy"])
    other = dict(real, accuracy={"last": 0.5, "best": 0.7, "mean_last_5": 0.6},
                 confusion_matrix=np.eye(len(names), dtype=int).tolist())
    unfinished = dict(real, step=1, preempted=True)
    for name, summary in (("fold1", other), ("stopped", unfinished)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    folds = [str(trained), str(tmp_path / "fold1")]
    out_json = tmp_path / "s.json"
    assert summarize.main(folds + ["--json", str(out_json), "--picture",
                                   str(tmp_path / "p.png")]) == 0
    result = json.loads(out_json.read_text())
    last = [real["accuracy"]["last"], 0.5]
    assert result["stats"]["accuracy/last"]["mean"] == pytest.approx(sum(last) / 2)
    assert result["stats"]["accuracy/last"]["std"] == pytest.approx(
        abs(last[0] - last[1]) / 2 ** 0.5)  # sample std of two values: |a − b| / √2
    pooled = np.asarray(real["confusion_matrix"]) + np.eye(len(names))
    assert result["pooled"]["confusion_matrix"] == pooled.tolist()
    assert result["pooled"]["accuracy"] == pytest.approx(np.trace(pooled) / pooled.sum())
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean (2 runs)" in capsys.readouterr().out
    # The unfinished run is listed but not counted; a missing workdir is named; both exit 1.
    assert summarize.main(folds + [str(tmp_path / "stopped"), str(tmp_path / "nothing"),
                                   "--json", str(out_json)]) == 1
    out = capsys.readouterr()
    assert "(step 1/" in out.out and "mean (2 runs)" in out.out
    assert "stopped at step 1" in out.err and "nothing: not a folder" in out.err
    assert summarize.main(folds + [str(tmp_path / "stopped"), "--include_unfinished"]) == 0
    assert "mean (3 runs)" in capsys.readouterr().out
    # Runs of different class lists are not averaged.
    (tmp_path / "fold1" / "summary.json").write_text(json.dumps(dict(
        other, per_class_accuracy=dict(zip(reversed(names), range(len(names)))))))
    assert summarize.main(folds) == 1
    assert "differ from" in capsys.readouterr().err
    # A summary.json that is not one, or whose matrix does not fit its classes, is named.
    for text, error in [("{not json", "not a ferjax summary (JSONDecodeError: "),
                        (json.dumps({"step": 3}), "not a ferjax summary (KeyError: "),
                        (json.dumps(dict(real, confusion_matrix=[[1, 0], [0, 1]])),
                         f"confusion matrix (2, 2) for {len(names)} classes")]:
        (tmp_path / "fold1" / "summary.json").write_text(text)
        assert summarize.main(folds) == 1
        assert f"error: {tmp_path / 'fold1' / 'summary.json'}: {error}" in capsys.readouterr().err


def test_exported_weights_give_pytorch_the_same_logits(trained, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert export.main(["--workdir", str(trained), "--checkpoint", "latest", str(out)]) == 0
    assert "class order: surprise, fear" in capsys.readouterr().out
    from safetensors import safe_open
    with safe_open(str(out), "np") as f:
        assert json.loads(f.metadata()["classes"])[:2] == ["surprise", "fear"]
    assert export.main(["--workdir", str(trained), str(tmp_path / "w.pth")]) == 1
    assert "safetensors or .npz" in capsys.readouterr().err
    npz = export.export_workdir(str(trained), str(tmp_path / "w.npz"), "latest")
    assert npz["tensors"] == len(np.load(tmp_path / "w.npz").files) - 1  # and __classes__
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    from benchmarks.torch_reference import TorchResNet18
    from ferjax.workdir import restore_model
    reference = TorchResNet18(num_classes=7, width=8)
    missing, unexpected = reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in load_file(str(out)).items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    reference.eval()
    _, model, _, _ = restore_model(str(trained), "latest")
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(model(images)["logits"]), expected, atol=1e-4)


def test_main_rejects_an_unknown_config_key(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "ferjax.main", "--config", "configs/synthetic.py:smoke",
         "--workdir", str(tmp_path), "--config.train.no_such_field=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: --config.train.no_such_field: config.train has no field 'no_such_field'; "
        "its fields: batch_size,")
    for spec, message in [
            ("configs/affectnet.py:mek,clases=8", "ValueError: config argument 'clases=8' not "
                                                  "understood"),
            ("configs/no_such.py", "No such file or directory: 'configs/no_such.py'")]:
        proc = subprocess.run([sys.executable, "-m", "ferjax.main", "--config", spec,
                               "--workdir", str(tmp_path)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --config={spec}: ") and message in last


def test_synthetic_presets_keep_the_settings_chosen_on_validation():
    # README, Results: the quick start must stay within its time budget; mek, rul_cbam and
    # rlrcnet lengths and rul_cbam's from-scratch settings were chosen on the validation split.
    assert load("synthetic.py").train.epochs == 16
    assert load("synthetic.py", "mek").train.epochs == 48
    assert load("synthetic.py", "rlrcnet").train.epochs == 48
    rul = load("synthetic.py", "rul_cbam")
    assert (rul.train.epochs, rul.optim.classifier_lr_multiplier,
            rul.loss.class_weight) == (48, 1.0, "sqrt_inv")
    paper = load("rafdb.py", "rul_cbam")  # real datasets keep the paper's settings
    assert (paper.optim.classifier_lr_multiplier, paper.loss.class_weight) == (10.0, "inv_norm_K")


def test_flip_pair_warns_when_its_consistency_is_unattainable(caplog):
    config = load("synthetic.py", "mek")
    with caplog.at_level("WARNING", logger="ferjax"):
        train.warn_if_flip_consistency_unattainable(config)  # 64 px: offset grids
    assert "config.data.image_size=64" in caplog.text and "e.g. 65" in caplog.text
    caplog.clear()
    config.data.image_size = 65
    with caplog.at_level("WARNING", logger="ferjax"):
        train.warn_if_flip_consistency_unattainable(config)
        train.warn_if_flip_consistency_unattainable(load("rafdb.py", "mek_swin"))  # 112 px
    assert "image_size" not in caplog.text


def test_a_workdir_from_before_a_new_field_reads_with_its_default(tmp_path):
    from ferjax.workdir import load_config as load_workdir_config
    saved = load("synthetic.py", "mek").to_dict()
    del saved["loss"]["flip_bn"]
    (tmp_path / "config.json").write_text(__import__("json").dumps(saved))
    config = load_workdir_config(str(tmp_path))
    assert config.loss.flip_bn == "joint"
    assert dict(config.loss.terms) == {"rsl": 1.0, "rac": 0.01}  # not merged with 'ce'
    train.make_recipe(config)
    config.loss.flip_bn = "both"
    with pytest.raises(ValueError, match="config.loss.flip_bn='both'"):
        train.make_recipe(config)
    config.loss.flip_bn = "joint"
    config.data.sampler = "balanced"
    with pytest.raises(KeyError, match=r"config.data.sampler='balanced'; registered samplers: "
                                       r"\['class_balanced', 'reversed', 'uniform'\]"):
        train.make_recipe(config)


@pytest.mark.parametrize("dotted", sorted(plan_lib.CHOICES))
def test_a_value_a_field_does_not_take_fails_the_recipe_naming_the_field(dotted):
    """Also fields the method does not use (the baseline has no BBN α, no erasing): a typo
    there would otherwise pass unnoticed, or fail only inside the first traced step."""
    config = load("synthetic.py", "baseline")
    train.make_recipe(config)
    group, field = dotted.rsplit(".", 1)
    node = config
    for part in group.split("."):
        node = node[part]
    with node.ignore_type():
        node[field] = "nonsense"
    with pytest.raises(ValueError, match=re.escape(f"config.{dotted}='nonsense'; expected one "
                                                   f"of {plan_lib.CHOICES[dotted]}")):
        train.make_recipe(config)


def test_loss_terms_that_cannot_run_are_named():
    config = load("synthetic.py", "baseline")
    config.loss.terms = {"ce": 1.0, "rac": 0.1}
    with pytest.raises(ValueError, match="config.loss.terms has 'rac', which needs "
                                         "config.loss.forward='flip_pair' \\(got 'single'\\)"):
        train.make_recipe(config)
    config.loss.terms = {}
    with pytest.raises(ValueError, match="config.loss.terms is empty: name at least one"):
        train.make_recipe(config)
    config.loss.terms = {"ce": 1.0, "focal": 1.0}
    with pytest.raises(KeyError, match=r"unknown loss term 'focal'; registered: \["):
        train.make_recipe(config)


def test_a_mix_group_size_that_does_not_divide_the_batch_fails_naming_both_keys():
    config = load("synthetic.py", "rul_cbam")
    config.train.batch_size = 64
    config.loss.mix_group_size = 32
    assert train.make_recipe(config).loss_static["mix_group_size"] == 32
    config.loss.mix_group_size = 24
    with pytest.raises(ValueError, match=r"config.loss.mix_group_size=24 does not divide "
                                         r"config.train.batch_size=64"):
        train.make_recipe(config)


def test_summarize_a_final_split_over_runs_with_the_best_or_last_matrices(trained, tmp_path,
                                                                          capsys):
    """--split summarizes summary.json final_splits[split]: kinds last and best, pooled
    over the `--pool` model's matrices; a run without that split is named."""
    real = json.loads((trained / "summary.json").read_text())
    k = len(real["per_class_accuracy"])
    eye, ones = np.eye(k, dtype=int), np.ones((k, k), dtype=int)

    def final(acc_last, acc_best, cm_last, cm_best):
        return {"test": {
            "last": {"step": 6, "accuracy": acc_last, "mean_class_accuracy": 0.4,
                     "macro_f1": 0.3, "confusion_matrix": cm_last.tolist()},
            "best": {"step": 3, "accuracy": acc_best, "mean_class_accuracy": 0.5,
                     "macro_f1": 0.35, "confusion_matrix": cm_best.tolist()}}}

    for name, finals in (("seed0", final(0.6, 0.8, eye, ones)),
                         ("seed1", final(0.4, 0.7, ones, eye))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(dict(real,
                                                                      final_splits=finals)))
    seeds = [str(tmp_path / "seed0"), str(tmp_path / "seed1")]
    for seed, commit in zip(seeds, ("a" * 40, "b" * 40)):
        pathlib.Path(seed, "starts.jsonl").write_text(json.dumps(
            {"start_step": 0, "ferjax_commit": commit, "packages": {"jax": "0.10.2"}}) + "\n")
    out_json = tmp_path / "s.json"
    assert summarize.main(seeds + ["--split", "test", "--pool", "best", "--json",
                                   str(out_json)]) == 0
    captured = capsys.readouterr()
    assert f"note: the runs come from different code: {seeds[0]}: {'a' * 40}, jax 0.10.2" \
        in captured.err
    result = json.loads(out_json.read_text())
    assert result["stats"]["accuracy/best"]["mean"] == pytest.approx(0.75)
    assert result["stats"]["accuracy/last"]["std"] == pytest.approx(0.2 / 2 ** 0.5)
    assert "accuracy/mean_last" not in result["stats"]
    assert result["pooled"]["confusion_matrix"] == (ones + eye).tolist()  # seed0 best + seed1 best
    out = captured.out
    assert "meanK" not in out and "mean5" not in out and "test with the best models" in out
    # A run lacking the split is named; --pool best needs --split.
    assert summarize.main(seeds + [str(trained), "--split", "test"]) == 1
    assert "no final_splits['test']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        summarize.main(seeds + ["--pool", "best"])


def test_dry_run_prints_the_plan_without_training(tmp_path):
    """--dry_run checks the config against the data and prints what the run would do; it
    neither trains nor creates the workdir."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "ferjax.main", "--config", "configs/synthetic.py:mek,smoke",
         "--workdir", str(workdir), "--dry_run", f"--config.data.data_dir={tmp_path / 'data'}",
         "--config.data.imbalance_factor=10", "--config.eval.track_splits=test",
         "--config.data.host_image_size=24", "--config.data.train_resize=bicubic"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert not workdir.exists()
    train_line = next(line for line in out.splitlines() if line.startswith("train: "))
    counts = out.splitlines()[out.splitlines().index(train_line) + 1]
    total = sum(int(c.split("=")[1]) for c in counts.split())
    assert f"{total} images after imbalance_factor=10" in train_line  # counts add up
    # tiny's train: happiness 49, neutral 36, ..., anger 6 ranked last: ⌊49 · 10^(−r/6)⌋
    assert "happiness=49" in counts and "neutral=33" in counts and "anger=4" in counts
    assert "loss: forward flip_pair; 0.01·rac + 1·rsl; MEK weights" in out
    assert "tracked at every evaluation: test (70 images)" in out
    assert "augment (on device): bicubic resize to 32 px, " in out
    assert f"workdir {workdir}: new run" in out and "parameters" in out
    # A bad config fails the dry run the way it would fail the run. With JAX looking for
    # every platform, as a user's command does: no line about the absent TPU runtime.
    env.pop("JAX_PLATFORMS")
    proc = subprocess.run(
        [sys.executable, "-m", "ferjax.main", "--config", "configs/synthetic.py:smoke",
         "--workdir", str(workdir), "--dry_run", f"--config.data.data_dir={tmp_path / 'data'}",
         "--config.eval.track_splits=tset"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "config.eval.track_splits has 'tset'" in proc.stderr
    assert "libtpu" not in proc.stderr and "devices: [CpuDevice(id=0)" in proc.stderr
