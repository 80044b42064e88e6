"""Builders from tiny fake copies of each real layout, the synthetic set, and the grain pipeline."""

import csv
import functools
import importlib.util
import io
import logging
import multiprocessing
import pathlib
import shutil
import sys
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ferjax import console
from ferjax.data import build as build_lib
from ferjax.data import pipeline, sources, synthetic
from ferjax.data.builders import subject_folds
from ferjax.data.builders.base import map_in_order
from ferjax.data.images import BadImageError, open_rgb
from ferjax.data.sources import divide_split, open_split, open_train_and_eval

RNG = np.random.default_rng(0)


def save_image(path, size=(12, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(RNG.integers(0, 65535, size, dtype=np.uint16)).save(path)
    else:
        arr = RNG.integers(0, 255, size + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
        img = Image.fromarray(arr)
        img = img.convert(mode) if mode != img.mode else img
        img.save(path)


def build(name, manual_dir, data_dir, config=None, **kw):
    return build_lib.build(name, config=config, manual_dir=str(manual_dir) if manual_dir else None,
                           data_dir=str(data_dir), **kw)


def labels_of(builder, split):
    return build_lib.label_counts(builder, split)


# ------------------------------------------------------------------------------ RAF-DB

def test_rafdb_builds_exact_official_counts(tmp_path, rafdb_label_file):
    manual = tmp_path / "raf" / "basic"
    (manual / "EmoLabel").mkdir(parents=True)
    shutil.copy(rafdb_label_file, manual / "EmoLabel")
    names = [line.split()[0] for line in rafdb_label_file.read_text().splitlines() if line]
    tiny = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    (manual / "Image" / "aligned").mkdir(parents=True)
    for name in names:
        tiny.save(manual / "Image" / "aligned" / f"{name[:-4]}_aligned.jpg")
    # An image the label file names but the folder lacks is skipped, counted and named.
    (manual / "Image" / "aligned" / "test_0001_aligned.jpg").unlink()  # label 5: Sadness
    builder = build("rafdb", tmp_path / "raf", tmp_path / "data")
    assert labels_of(builder, "train").tolist() == [1290, 281, 717, 4772, 1982, 705, 2524]
    assert labels_of(builder, "test").tolist() == [329, 74, 160, 1185, 477, 162, 680]
    assert len(builder.skipped["test"]) == 1
    assert "image not found" in builder.skipped["test"][0]
    assert "test_0001_aligned.jpg" in builder.skipped["test"][0]
    meta = builder.info.metadata
    assert meta["source_to_canonical"]["Happiness"] == "happiness"
    ids = {builder.as_data_source("test")[i]["id"] for i in range(5)}
    assert all(i.decode().startswith("test_") for i in ids)


def _small_raf(tmp_path, label_lines):
    manual = tmp_path / "raf"
    (manual / "EmoLabel").mkdir(parents=True)
    (manual / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(label_lines))
    return manual


def test_rafdb_label_file_with_other_counts_is_refused(tmp_path):
    manual = _small_raf(tmp_path, ["train_00001.jpg 1", "test_0001.jpg 2"])
    with pytest.raises(ValueError, match="differ from RAF-DB basic"):
        build("rafdb", manual, tmp_path / "data")


def test_missing_or_empty_manual_dir_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*RAF-DB is licensed"):
        build("rafdb", tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        build("rafdb", tmp_path / "empty", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="needs --manual_dir"):
        build("affectnet", None, tmp_path / "data")


# ------------------------------------------------------------------------------ image folder

def odd_images_folder(root):
    """An image_folder tree with every image mode ferjax converts, a corrupt and a
    truncated file."""
    save_image(root / "train" / "happy" / "a.jpg")
    save_image(root / "train" / "happy" / "grey.png", mode="L")
    save_image(root / "train" / "sad" / "cmyk.jpg", mode="CMYK")
    save_image(root / "train" / "sad" / "deep.png", mode="I;16")
    save_image(root / "train" / "neutral" / "rgba.png", mode="RGBA")
    (root / "train" / "neutral" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    good = root / "train" / "neutral" / "cut.jpg"
    save_image(good, size=(64, 64))
    good.write_bytes(good.read_bytes()[:200])  # truncated
    save_image(root / "test" / "angry" / "t.jpg")
    return root


def test_image_folder_converts_odd_images_and_skips_corrupt_ones(tmp_path):
    root = odd_images_folder(tmp_path / "faces")
    builder = build("image_folder", root, tmp_path / "data")
    counts = labels_of(builder, "train")
    assert counts.tolist() == [0, 0, 0, 2, 2, 0, 1]
    assert len(builder.skipped["train"]) == 2
    assert any("broken.jpg" in s for s in builder.skipped["train"])
    example = builder.as_data_source("train")[0]
    assert example["image"].dtype == np.uint8 and example["image"].shape[-1] == 3


def run_as_python_m(monkeypatch):
    """Makes `__main__` look as under `python -m ...`, where builds may spawn workers."""
    module = types.ModuleType("__main__")
    module.__spec__ = importlib.util.find_spec("ferjax.data.build")
    monkeypatch.setitem(sys.modules, "__main__", module)


def test_building_leaves_no_temporary_folders(tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    save_image(tmp_path / "faces" / "happy" / "a.jpg")
    build("image_folder", tmp_path / "faces", tmp_path / "data")
    assert list(temp.iterdir()) == []


def test_images_encoded_in_workers_are_stored_as_encoded_here(tmp_path, monkeypatch):
    root = odd_images_folder(tmp_path / "faces")
    here = build("image_folder", root, tmp_path / "here")
    run_as_python_m(monkeypatch)
    monkeypatch.setitem(map_in_order.__kwdefaults__, "min_parallel", 1)
    monkeypatch.setattr("ferjax.data.builders.base.usable_cores", lambda: 2)
    pools = []
    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr("ferjax.data.builders.base.multiprocessing.get_context",
                        lambda method: pools.append(method) or spawn)
    workers = build("image_folder", root, tmp_path / "workers")
    assert pools == ["spawn", "spawn"]  # train and test went through worker pools
    assert workers.skipped == here.skipped and len(workers.skipped["train"]) == 2
    for split in ("train", "test"):
        a, b = here.as_data_source(split), workers.as_data_source(split)
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert a[i]["id"] == b[i]["id"] and a[i]["label"] == b[i]["label"]
            np.testing.assert_array_equal(a[i]["image"], b[i]["image"])


def test_image_folder_bad_image_is_fatal_with_the_flag(tmp_path):
    root = tmp_path / "faces"
    save_image(root / "happy" / "a.jpg")
    (root / "happy" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(BadImageError, match="broken.jpg"):
        build("image_folder", root, tmp_path / "data", on_bad_image="fail")


def test_image_folder_unknown_class_and_empty_split(tmp_path):
    root = tmp_path / "faces"
    save_image(root / "bored" / "a.jpg")
    with pytest.raises(ValueError, match="class folder .*bored"):
        build("image_folder", root, tmp_path / "data")
    root2 = tmp_path / "faces2"
    (root2 / "happy").mkdir(parents=True)
    (root2 / "happy" / "x.jpg").write_bytes(b"bad")
    with pytest.raises(ValueError, match="split 'train' came out empty"):
        build("image_folder", root2, tmp_path / "data2")


def test_open_rgb_handles_modes_and_names_missing_files(tmp_path):
    for mode in ("L", "CMYK", "I;16", "RGBA", "P"):
        path = tmp_path / f"x_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        save_image(path, mode=mode)
        img = open_rgb(path)
        assert img.mode == "RGB" and img.size == (12, 12)
    with pytest.raises(BadImageError, match="not found: .*nothere.png"):
        open_rgb(tmp_path / "nothere.png")


# ------------------------------------------------------------------------------ AffectNet

def _affectnet(tmp_path):
    manual = _mk(tmp_path / "affectnet")
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    for csv_name, codes in (("training.csv", [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]),
                            ("validation.csv", [1, 7, 9])):
        with open(manual / csv_name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i, code in enumerate(codes):
                rel = f"{i}/{csv_name[0]}{i}.jpg"
                save_image(manual / "Manually_Annotated_Images" / rel, size=(40, 30))
                w.writerow([rel, 5, 4, 20, 22, "", code, 0.1, 0.2])
    return manual


def _mk(path):
    path.mkdir(parents=True)
    return path


def test_affectnet_7_and_8_classes_crop_and_drop(tmp_path):
    manual = _affectnet(tmp_path)
    b7 = build("affectnet", manual, tmp_path / "data", config="7")
    b8 = build("affectnet", manual, tmp_path / "data", config="8")
    # codes 0..6 -> Ne Ha Sa Su Fe Di An in canonical order; 8 and 10 dropped; 7 only in '8'.
    assert labels_of(b7, "train").tolist() == [1, 1, 1, 1, 1, 1, 1]
    assert labels_of(b8, "train").tolist() == [1, 1, 1, 1, 1, 1, 1, 1]
    assert labels_of(b8, "test").tolist() == [0, 0, 0, 1, 0, 0, 0, 1]
    img = b7.as_data_source("train")[0]["image"]
    assert img.shape == (22, 20, 3)  # the csv face box


def test_affectnet_bad_rows_name_the_line_and_bad_face_boxes_are_skipped(tmp_path):
    manual = _affectnet(tmp_path)
    training = manual / "training.csv"
    rows = training.read_text().splitlines()
    rows[1] = rows[1].replace(",5,4,20,22,", ",5,4,0,22,")  # an empty box
    rows[2] = rows[2].replace(",5,4,20,22,", ",50,60,20,22,")  # right of the 30 x 40 image
    training.write_text("\n".join(rows) + "\n")
    b = build("affectnet", manual, tmp_path / "data", config="7")
    assert labels_of(b, "train").sum() == 5  # 7 expressions, 2 boxes that cannot be cut
    assert sorted(b.skipped["train"]) == [
        f"empty face box (5, 4, 0, 22) for {manual}/Manually_Annotated_Images/0/t0.jpg",
        f"face box (50, 60, 20, 22) lies outside {manual}/Manually_Annotated_Images/1/t1.jpg "
        "(30x40)"]
    for line, error in [(rows[3].replace(",2,0.1,", ",sad,0.1,"),
                         r"training.csv:4: expression 'sad' is not a number"),
                        (rows[3].replace(",2,0.1,", ",11,0.1,"),
                         r"training.csv:4: expression code 11 outside 0..10")]:
        training.write_text("\n".join([*rows[:3], line]) + "\n")
        with pytest.raises(ValueError, match=error):
            build("affectnet", manual, tmp_path / "other", config="7")
    training.write_text("\n".join([rows[0].replace("expression", "label"), *rows[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"training.csv: missing columns \['expression'\]"):
        build("affectnet", manual, tmp_path / "other", config="7")


# ------------------------------------------------------------------------------ FER2013 / FERPlus

def _fer_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for emotion, usage in rows:
            w.writerow([emotion, " ".join(str(v) for v in RNG.integers(0, 255, 2304)), usage])


def test_fer2013_splits_and_label_mapping(tmp_path):
    manual = _mk(tmp_path / "fer")
    _fer_csv(manual / "fer2013.csv", [(0, "Training"), (3, "Training"), (5, "PublicTest"),
                                      (6, "PrivateTest")])
    b = build("fer2013", manual, tmp_path / "data")
    assert labels_of(b, "train").tolist() == [0, 0, 0, 1, 0, 1, 0]  # Angry->5, Happy->3
    assert labels_of(b, "validation").tolist() == [1, 0, 0, 0, 0, 0, 0]  # Surprise->0
    assert labels_of(b, "test").tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert b.as_data_source("train")[0]["image"].shape == (48, 48, 3)


def test_fer2013_bad_rows_name_the_line(tmp_path):
    manual = _mk(tmp_path / "fer")
    _fer_csv(manual / "fer2013.csv", [(0, "Training"), (9, "Training")])
    with pytest.raises(ValueError, match=r"fer2013.csv:3: emotion '9'"):
        build("fer2013", manual, tmp_path / "data")
    _fer_csv(manual / "fer2013.csv", [(0, "Training"), (1, "Test")])
    with pytest.raises(ValueError, match=r"fer2013.csv:3: unknown Usage 'Test'"):
        build("fer2013", manual, tmp_path / "data")
    good = (manual / "fer2013.csv").read_text().splitlines()[1].rsplit(",", 1)[0]
    for pixels, error in [("1 2 3", "expected 2304 grey values, got 3"),
                          (" ".join(["7"] * 2303 + ["256"]), r"grey values outside 0..255 "
                                                           r"\(7..256\)"),
                          (" ".join(["7"] * 2303 + ["x"]), "pixels are not all whole numbers")]:
        (manual / "fer2013.csv").write_text(
            f"emotion,pixels,Usage\n{good},Training\n0,{pixels},Training\n")
        with pytest.raises(ValueError, match=f"fer2013.csv:3: {error}"):
            build("fer2013", manual, tmp_path / "data")
    (manual / "fer2013.csv").write_text(f"emotion,pixels\n{good}\n")
    with pytest.raises(ValueError, match=r"fer2013.csv: missing columns \['Usage'\]"):
        build("fer2013", manual, tmp_path / "data")


def test_ferplus_majority_votes(tmp_path):
    manual = _mk(tmp_path / "ferplus")
    _fer_csv(manual / "fer2013.csv", [(0, "Training")] * 5 + [(0, "PrivateTest"),
                                                              (0, "PublicTest")])
    votes = [[0, 8, 0, 0, 0, 0, 0, 0, 2, 0],   # happiness
             [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],   # tie -> dropped
             [0, 0, 0, 0, 0, 0, 0, 0, 6, 4],   # unknown -> dropped
             [0, 0, 0, 0, 0, 0, 0, 7, 3, 0],   # contempt
             [1, 0, 0, 0, 0, 0, 9, 0, 0, 0],   # fear
             [0, 0, 10, 0, 0, 0, 0, 0, 0, 0],  # surprise (test)
             [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]]  # neutral (validation)
    with open(manual / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness",
                    "anger", "disgust", "fear", "contempt", "unknown", "NF"])
        for i, v in enumerate(votes):
            usage = "Training" if i < 5 else ("PrivateTest" if i == 5 else "PublicTest")
            w.writerow([usage, f"fer{i:07d}.png", *v])
    b8 = build("ferplus", manual, tmp_path / "data", config="8")
    assert labels_of(b8, "train").tolist() == [0, 1, 0, 1, 0, 0, 0, 1]
    assert b8.dropped["no_majority"] == 1 and b8.dropped["unknown_or_not_face"] == 1
    b7 = build("ferplus", manual, tmp_path / "data", config="7")
    assert labels_of(b7, "train").tolist() == [0, 1, 0, 1, 0, 0, 0]
    ex = b8.as_data_source("test")[0]
    assert ex["votes"].tolist() == votes[5] and ex["label"] == 0
    # A votes file that does not match fer2013.csv, or cannot be read, is named.
    lines = (manual / "fer2013new.csv").read_text().splitlines()
    for text, error in [
            (lines[:-1], r"fer2013new.csv has 6 rows but .*fer2013.csv has 7; they must be "
                         r"the matching FER2013 files"),
            ([lines[0], lines[1].replace(",8,", ",eight,"), *lines[2:]],
             r"fer2013new.csv:2: vote counts \['0', 'eight', .*\] are not numbers"),
            ([lines[0].rsplit(",", 3)[0], *lines[1:]],
             "fer2013new.csv: expected Usage, Image name and 10 vote columns")]:
        (manual / "fer2013new.csv").write_text("\n".join(text) + "\n")
        with pytest.raises(ValueError, match=error):
            build("ferplus", manual, tmp_path / "other", config="8")


# ------------------------------------------------------------------------------ CK+

def test_ckplus_last_frames_subjects_and_folds(tmp_path):
    manual = tmp_path / "ck"
    sequences = {("S005", "001"): 3, ("S010", "002"): 7, ("S011", "004"): 5}  # anger/surprise/happy
    for (subj, seq), code in sequences.items():
        for frame in range(1, 7):
            save_image(manual / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{frame:08d}.png",
                       mode="L")
        emo = manual / "Emotion" / subj / seq / f"{subj}_{seq}_00000006_emotion.txt"
        emo.parent.mkdir(parents=True)
        emo.write_text(f"   {code:.7e}\n")
    b = build("ckplus", manual, tmp_path / "data", config="last3")
    assert labels_of(b, "train").tolist() == [3, 0, 3, 3, 0, 0, 0, 0]  # Su, Di, Ha
    raw = b.as_data_source("train")
    subjects = {raw[i]["subject"].decode() for i in range(len(raw))}
    assert subjects == {"S005", "S010", "S011"}
    bn = build("ckplus", manual, tmp_path / "data", config="last3_neutral")
    assert labels_of(bn, "train")[6] == 3
    folds = subject_folds(["a", "a", "b", "c", "c"], num_folds=3)
    assert folds[0] == folds[1] and folds[3] == folds[4] and len(set(folds)) == 3
    rest, held = divide_split(b, "train", open_split(b, "train"), fold=0, num_folds=3)
    assert len(held) + len(rest) == 9 and len(held) == 3
    held_subjects = {held.source[i]["subject"] for i in range(len(held))}
    rest_subjects = {rest.source[i]["subject"] for i in range(len(rest))}
    assert len(held_subjects) == 1 and not held_subjects & rest_subjects
    with pytest.raises(ValueError, match="3 subjects cannot fill 10 folds"):
        divide_split(b, "train", open_split(b, "train"), fold=0, num_folds=10)
    # Bad label files and a labelled sequence without frames are named.
    emo = manual / "Emotion" / "S005" / "001" / "S005_001_00000006_emotion.txt"
    for text, error in [("anger", r"S005_001_00000006_emotion.txt: emotion code 'anger' is "
                                  r"not a number"),
                        ("8.0", r"S005_001_00000006_emotion.txt: emotion code 8 outside 1..7")]:
        emo.write_text(text)
        with pytest.raises(ValueError, match=error):
            build("ckplus", manual, tmp_path / "other", config="last3")
    emo.write_text("3")
    shutil.rmtree(manual / "cohn-kanade-images" / "S005" / "001")
    with pytest.raises(FileNotFoundError, match=r"labels sequence S005/001 but .*S005/001 has "
                                                r"no frames"):
        build("ckplus", manual, tmp_path / "other", config="last3")


# ------------------------------------------------------------------------------ synthetic

def test_synthetic_is_deterministic_long_tailed_and_balanced_at_test(tmp_path):
    a = np.asarray(synthetic.draw_face(2, synthetic.example_rng(0, "train", 5), 32))
    b = np.asarray(synthetic.draw_face(2, synthetic.example_rng(0, "train", 5), 32))
    np.testing.assert_array_equal(a, b)
    counts = synthetic.long_tail_counts(4000, 17.0)
    assert counts.argmax() == 3 and counts.argmin() == 1
    assert 15 < counts.max() / counts.min() < 19
    builder = build("synthetic_fer", None, tmp_path / "data", config="tiny")
    assert labels_of(builder, "test").tolist() == [10] * 7
    assert labels_of(builder, "validation").tolist() == [5] * 7
    val = builder.as_data_source("validation")
    assert all(val[i]["label"] == val[i]["clean_label"] for i in range(len(val)))
    ex = builder.as_data_source("train")[0]
    assert ex["image"].shape == (32, 32, 3)
    clean = [builder.as_data_source("train")[i] for i in range(140)]
    assert any(e["label"] != e["clean_label"] for e in clean)  # some labels are noisy


def test_synthetic_examples_drawn_in_workers_equal_those_drawn_here(monkeypatch):
    draw = functools.partial(synthetic.encoded_example, seed=0, split="train", size=32,
                             min_intensity=0.6, param_noise_scale=0.6, label_noise=0.5)
    jobs = [(index, index % 7) for index in range(40)]
    here = list(map_in_order(draw, jobs, min_parallel=len(jobs) + 1))
    run_as_python_m(monkeypatch)
    workers = list(map_in_order(draw, jobs, min_parallel=0, workers=2))
    assert workers == here
    assert any(label != clean for (_, clean), (_, label) in zip(jobs, here))  # noise drawn
    # A script run by path may lack an `if __name__ == "__main__"` guard, which spawned
    # workers would run again: its builds stay in its own process.
    script = types.ModuleType("__main__")
    script.__file__, script.__spec__ = "/somewhere/train_my_model.py", None
    monkeypatch.setitem(sys.modules, "__main__", script)
    monkeypatch.setattr(multiprocessing, "get_context", None)  # would fail if called
    assert list(map_in_order(draw, jobs, min_parallel=0, workers=2)) == here
    # The stored bytes decode to exactly the face drawn from the example's stream.
    face = synthetic.draw_face(3, synthetic.example_rng(0, "train", 3), 32)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(here[3][0]))),
                                  np.asarray(face))


def test_synthetic_difficulty_knobs():
    rng = lambda: synthetic.example_rng(0, "train", 3)  # noqa: E731
    # Full intensity without parameter noise is exactly the class's expression.
    np.testing.assert_allclose(synthetic.expression_params(4, rng(), 1.0, 0.0),
                               synthetic.EXPRESSIONS[4])
    # Lower intensities move a face toward neutral, never past it.
    weak = [synthetic.expression_params(0, synthetic.example_rng(0, "train", i), 0.0, 0.0)
            for i in range(50)]
    brow = np.array([w[0] for w in weak])
    assert 0.0 <= brow.min() and brow.max() <= synthetic.EXPRESSIONS[0][0]
    # The same example differs between the default and the 'hard' (1.0.0) difficulty, and
    # the random stream stays aligned: the label noise draw is unchanged.
    easy, hard = rng(), rng()
    a = np.asarray(synthetic.draw_face(1, easy, 32))
    b = np.asarray(synthetic.draw_face(1, hard, 32, min_intensity=0.35, param_noise_scale=1.0))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0
    assert easy.random() == hard.random()


# ------------------------------------------------------------------------------ pipeline

@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    build("synthetic_fer", None, data_dir, config="tiny")
    return data_dir


@pytest.fixture(scope="module")
def tiny_split(tiny_data_dir):
    builder = build_lib.make_builder("synthetic_fer", "tiny", str(tiny_data_dir))
    return open_split(builder, "train"), open_split(builder, "test")


def tiny_data_config(data_dir, **fields) -> ml_collections.ConfigDict:
    """config.data for the tiny synthetic set in `data_dir`: train on 'train', evaluate
    'test', no folds or held-out part, unless `fields` say otherwise."""
    return ml_collections.ConfigDict({
        **dict(name="synthetic_fer", config="tiny", data_dir=str(data_dir), auto_build=False,
               train_split="train", eval_split="test", fold=-1, num_folds=10,
               holdout_fraction=0.0), **fields})


def test_holdout_is_a_fixed_per_class_part_of_train(tiny_data_dir, monkeypatch):
    cfg = tiny_data_config(tiny_data_dir, eval_split="holdout", holdout_fraction=0.25)
    read = []  # the train split's labels are read once for both parts
    real_labels = sources._labels
    monkeypatch.setattr(sources, "_labels", lambda b, split: read.append(split) or
                        real_labels(b, split))
    train, held = open_train_and_eval(cfg)
    assert read == ["train"]
    full = open_split(build_lib.make_builder("synthetic_fer", "tiny", str(tiny_data_dir)),
                      "train")
    assert len(train) + len(held) == len(full)
    full_counts = np.bincount(full.labels, minlength=7)
    held_counts = np.bincount(held.labels, minlength=7)
    np.testing.assert_array_equal(held_counts, np.maximum(1, np.round(full_counts * 0.25)))
    keys = lambda split: {bytes(split.source[i]["image"]) for i in range(len(split))}  # noqa: E731
    assert not keys(train) & keys(held)
    # The same images every time, whatever the run's seed.
    again = open_train_and_eval(cfg)[1]
    assert keys(again) == keys(held)
    # python -m ferjax.evaluate --split holdout opens the same part.
    builder = build_lib.make_builder("synthetic_fer", "tiny", str(tiny_data_dir))
    assert keys(sources.open_eval_split(builder, cfg, "holdout")) == keys(held)
    assert len(sources.open_eval_split(builder, cfg, "test")) == 70
    cfg.holdout_fraction = 0.0
    with pytest.raises(ValueError, match="needs config.data.holdout_fraction > 0"):
        open_train_and_eval(cfg)
    # config.eval.final_splits is checked before training by the same rule it is opened by.
    for fold in (-1, 0):
        cfg.fold = fold
        with pytest.raises(ValueError, match="final_splits names 'holdout'"):
            sources.check_eval_split(builder, cfg, "holdout", "config.eval.final_splits")
        with pytest.raises(ValueError, match="needs config.data.holdout_fraction > 0"):
            sources.open_eval_split(builder, cfg, "holdout")
    cfg.fold = -1
    cfg.holdout_fraction, cfg.fold = 0.1, 0
    with pytest.raises(ValueError, match="config.data.fold and config.data.holdout_fraction"):
        open_train_and_eval(cfg)


def test_a_misnamed_split_is_reported_with_its_config_key(tiny_data_dir, capsys):
    cfg = tiny_data_config(tiny_data_dir, eval_split="tst")
    with pytest.raises(KeyError) as error:
        open_train_and_eval(cfg)
    console.print_error(error.value)  # the line a command prints: the message, unquoted
    assert capsys.readouterr().err == (
        "error: config.data.eval_split has 'tst'; synthetic_fer has splits "
        "['train', 'validation', 'test', 'test_longtail'] (or 'holdout')\n")
    cfg.eval_split, cfg.train_split = "test", "trian"
    with pytest.raises(KeyError, match="config.data.train_split has 'trian'; synthetic_fer "
                                       "has splits"):
        open_train_and_eval(cfg)


def test_unknown_datasets_configs_and_empty_folders_are_named(tmp_path, tiny_data_dir,
                                                              tiny_split):
    with pytest.raises(KeyError, match=r"unknown dataset 'rafbd'; known: \[.*'rafdb'"):
        build("rafbd", None, tmp_path / "data")
    with pytest.raises(ValueError, match=r"dataset 'affectnet' has configs \['7', '8'\], "
                                         r"not '9'"):
        build_lib.make_builder("affectnet", "9", str(tmp_path / "data"))
    (tmp_path / "faces" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="faces/train has no class folders"):
        build("image_folder", tmp_path / "faces", tmp_path / "data")
    train, _ = tiny_split
    with pytest.raises(ValueError, match=r"the train split has 140 examples, fewer than one "
                                         r"batch of 256 \(config.train.batch_size\)"):
        pipeline.train_dataset(train.source, train.labels, global_batch_size=256, image_size=32)
    cfg = tiny_data_config(tiny_data_dir, holdout_fraction=1.0)
    with pytest.raises(ValueError, match=r"config.data.holdout_fraction=1.0; expected "
                                         r"0 <= value < 1"):
        open_train_and_eval(cfg)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_zero_and_two_workers_yield_identical_batches(tiny_split):
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    train, _ = tiny_split
    kw = dict(global_batch_size=8, image_size=24, sampler="uniform", seed=3)
    direct = _take(iter(pipeline.train_dataset(train.source, train.labels, num_workers=0,
                                               **kw).dataset), 5)
    it = iter(pipeline.train_dataset(train.source, train.labels, num_workers=2, **kw).dataset)
    workers = _take(it, 5)
    it.close() if hasattr(it, "close") else None
    for a, b in zip(direct, workers):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_the_stream_from_batch_s_is_the_whole_stream_without_its_first_s_batches(tiny_split):
    """What a resumed run reads (no iterator state is saved), with and without workers."""
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    train, _ = tiny_split
    kw = dict(global_batch_size=8, image_size=16, sampler="reversed",
              second_sampler="uniform", seed=1)
    whole = _take(iter(pipeline.train_dataset(train.source, train.labels, **kw).dataset), 7)
    for workers in (0, 2):
        data = pipeline.train_dataset(train.source, train.labels, num_workers=workers, **kw)
        it = iter(data.dataset_from(3))
        rest = _take(it, 4)
        it.close() if hasattr(it, "close") else None
        for a, b in zip(whole[3:], rest):
            for k in ("image", "label", "image_rev", "label_rev"):
                np.testing.assert_array_equal(a[k], b[k])


def test_uniform_epochs_visit_every_example_once_per_epoch(tiny_split):
    train, _ = tiny_split
    data = pipeline.train_dataset(train.source, train.labels, global_batch_size=14,
                                  image_size=8, seed=0)
    it = iter(data.dataset)
    first = np.concatenate([b["label"] for b in _take(it, 10)])  # 140 = one epoch
    np.testing.assert_array_equal(np.bincount(first, minlength=7),
                                  np.bincount(train.labels, minlength=7))


def test_reversed_sampler_follows_inverse_frequencies(tiny_split):
    train, _ = tiny_split
    counts = np.bincount(train.labels, minlength=7)
    probs = pipeline.SAMPLERS.get("reversed")(counts)
    stream = pipeline.index_stream(train.labels, "reversed", seed=0)
    drawn = train.labels[[stream[i] for i in range(20000)]]
    freq = np.bincount(drawn, minlength=7) / len(drawn)
    np.testing.assert_allclose(freq, probs, atol=0.015)
    assert probs.argmax() == counts.argmin()


def test_eval_padding_counts_every_example_once_over_processes(tiny_split):
    _, test = tiny_split
    seen = []
    for process in range(2):
        ds, n_batches = pipeline.eval_dataset(test.source, global_batch_size=16, image_size=8,
                                              process_index=process, process_count=2)
        batches = list(ds)
        assert len(batches) == n_batches
        for b in batches:
            seen += b["index"][b["mask"] > 0].tolist()
    assert sorted(seen) == list(range(len(test)))


def test_batch_size_must_divide_over_processes(tiny_split):
    train, _ = tiny_split
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        pipeline.train_dataset(train.source, train.labels, global_batch_size=8, image_size=8,
                               process_count=3)


def test_processes_read_contiguous_shares_of_the_same_global_batch(tiny_split):
    train, _ = tiny_split
    kw = dict(global_batch_size=8, image_size=8, seed=2, sampler="uniform")
    whole = _take(iter(pipeline.train_dataset(train.source, train.labels, **kw).dataset), 3)
    parts = [_take(iter(pipeline.train_dataset(train.source, train.labels, process_index=p,
                                               process_count=2, **kw).dataset), 3)
             for p in range(2)]
    for b, (p0, p1) in enumerate(zip(*parts)):
        np.testing.assert_array_equal(np.concatenate([p0["label"], p1["label"]]),
                                      whole[b]["label"])
        np.testing.assert_array_equal(np.concatenate([p0["image"], p1["image"]]),
                                      whole[b]["image"])


def test_interrupted_build_is_reported_not_deleted(tmp_path, caplog):
    version_dir = pathlib.Path(build_lib.make_builder("synthetic_fer", "tiny",
                                                      str(tmp_path)).data_dir)
    stale = version_dir.parent / f"incomplete.AB12CD_{version_dir.name}"
    stale.mkdir(parents=True)
    (stale / "shard-00000").write_bytes(b"x" * 2**20)
    with caplog.at_level(logging.WARNING, logger="ferjax.data"):
        build_lib.build("synthetic_fer", config="tiny", data_dir=str(tmp_path))
    assert f"{stale} is left from an interrupted build (1.0 MB)" in caplog.text
    assert stale.exists()  # another process might still be writing into it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ferjax.data"):
        build_lib.build("synthetic_fer", config="tiny", data_dir=str(tmp_path))
    assert "interrupted" not in caplog.text  # prepared: nothing to build, nothing to say


def test_a_damaged_record_file_is_named_with_the_command_that_rebuilds_it(tiny_data_dir,
                                                                         tmp_path, capsys):
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    version_dir = pathlib.Path(build_lib.make_builder("synthetic_fer", "tiny",
                                                      str(tmp_path / "data")).data_dir)
    damaged = next(version_dir.glob("*-train.array_record*"))
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    cfg = tiny_data_config(tmp_path / "data")
    with pytest.raises(build_lib.CorruptDatasetError, match=(
            rf"synthetic_fer split 'train' is damaged at record \d+ of 140 .*files: "
            rf"{damaged}\. Rebuild it: python -m ferjax.data.build --dataset synthetic_fer "
            rf"--config tiny --data_dir {tmp_path / 'data'} --overwrite$")):
        open_train_and_eval(cfg)
    command = ["--dataset", "synthetic_fer", "--config", "tiny", "--data_dir",
               str(tmp_path / "data")]
    assert build_lib.main(command) == 1  # reusing the damaged build: named, not a traceback
    assert "split 'train' is damaged" in capsys.readouterr().err
    assert build_lib.main(command + ["--overwrite"]) == 0  # what the message says to run
    assert len(open_train_and_eval(cfg)[0]) == 140


def test_an_unbuilt_dataset_gets_no_tfds_warning_about_its_missing_folder(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        builder = build_lib.make_builder("synthetic_fer", data_dir=str(tmp_path))
        assert not builder.is_prepared()
    assert "Variant folder" not in caplog.text


def test_a_build_whose_output_is_no_terminal_draws_no_progress_bars(tmp_path, capsys, caplog):
    """Like a log file, pytest's captured stderr is no terminal: TFDS's bars ('Generating
    splits... 1/4 [00:01, 3.00 splits/s]', one redraw after another) stay off. Nor does
    TFDS speak of downloads and 'Unknown size': nothing is downloaded."""
    with caplog.at_level(logging.INFO, logger="ferjax"):
        builder = build_lib.build("synthetic_fer", config="tiny", data_dir=str(tmp_path))
    assert builder.is_prepared()
    out, err = capsys.readouterr()
    assert "splits/s" not in err and "examples/s" not in err
    assert "ownload" not in out + err + caplog.text and "Unknown size" not in out + err
    assert f"synthetic_fer 1.2.0 is ready in {builder.data_dir}" in caplog.text
