"""Noisy-label and imbalance protocols of the training set, against hand-computed values."""

import ml_collections
import numpy as np
import pytest

from ferjax.data import build as build_lib
from ferjax.data import pipeline, protocols
from ferjax.data.sources import open_split, open_train_and_eval

RAFDB_TRAIN = [1290, 281, 717, 4772, 1982, 705, 2524]  # canonical order, spec §5.1


def test_long_tailed_counts_follow_the_exponential_profile():
    # Ranks by count: happiness 0, neutral 1, sadness 2, surprise 3, disgust 4, anger 5,
    # fear 6; n' = ⌊4772 · 100^(−r/6)⌋: 4772, 2214.97, 1028.08, 477.2, 221.50, 102.81, 47.72.
    assert protocols.long_tailed_counts(RAFDB_TRAIN, 100).tolist() == [
        477, 47, 221, 4772, 1028, 102, 2214]
    # A class smaller than its profile keeps all it has (fear: 4772 / 2 > 281); an absent
    # class stays absent and is not ranked: ⌊10 · 10^(−1/1)⌋ = 1.
    assert protocols.long_tailed_counts(RAFDB_TRAIN, 2)[1] == 281
    assert protocols.long_tailed_counts([10, 0, 5], 10).tolist() == [10, 0, 1]
    with pytest.raises(ValueError, match="imbalance_factor=0.5"):
        protocols.long_tailed_counts(RAFDB_TRAIN, 0.5)


def test_long_tailed_subset_is_fixed_and_keeps_the_counts():
    labels = np.repeat(np.arange(7), RAFDB_TRAIN)
    keep = protocols.long_tailed_subset(labels, 100)
    assert np.bincount(labels[keep]).tolist() == [477, 47, 221, 4772, 1028, 102, 2214]
    np.testing.assert_array_equal(keep, protocols.long_tailed_subset(labels, 100))


def test_symmetric_noise_swaps_exactly_the_fraction_to_other_present_classes():
    labels = np.repeat([0, 2, 3], [100, 300, 600])  # classes 1 and 4..6 absent
    noisy = protocols.symmetric_label_noise(labels, 0.2, num_classes=7)
    changed = noisy != labels
    assert changed.sum() == 200
    assert set(np.unique(noisy)) <= {0, 2, 3}
    np.testing.assert_array_equal(noisy, protocols.symmetric_label_noise(labels, 0.2, 7))
    # Each swapped label goes to the other two classes about equally.
    from_six = noisy[changed & (labels == 3)]
    assert abs(np.mean(from_six == 0) - 0.5) < 0.1
    with pytest.raises(ValueError, match="label_noise=1.0"):
        protocols.symmetric_label_noise(labels, 1.0, 7)


def test_label_file_errors_name_the_line_and_missing_images(tmp_path):
    good = tmp_path / "noise01.txt"
    good.write_text("train_00001.jpg 5\ntrain_00002.jpg 1\n\ntest_0001.jpg 7\n")
    labels = protocols.labels_from_file([b"train_00002.jpg", "train_00001.jpg"], good, 7)
    assert labels.tolist() == [0, 4]  # 1-based canonical; test lines ignored
    with pytest.raises(ValueError, match="lacks 1 of the 2 training images"):
        protocols.labels_from_file(["train_00001.jpg", "train_09999.jpg"], good, 7)
    for text, message in [("a.jpg 8\n", ":1: label 8 outside 1..7"),
                          ("a.jpg 1\nb.jpg\n", ":2: expected '<image> <label>'"),
                          ("a.jpg 1\nb.jpg sad\n", ":2: label 'sad' is not an integer"),
                          ("a.jpg 1\na.jpg 2\n", ":2: a.jpg is listed twice")]:
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(ValueError, match=message):
            protocols.read_label_file(tmp_path / "bad.txt", 7)
    with pytest.raises(FileNotFoundError, match="train_label_file"):
        protocols.read_label_file(tmp_path / "none.txt", 7)


def test_protocols_change_what_training_reads_and_not_what_is_evaluated(tmp_path):
    data_dir = tmp_path / "data"
    builder = build_lib.build("synthetic_fer", config="tiny", data_dir=str(data_dir))
    full, test = open_split(builder, "train"), open_split(builder, "test")
    ids = build_lib.read_field(builder, "train", "id")
    # A label file that moves every image to class (label + 1) mod 7.
    label_file = tmp_path / "labels.txt"
    label_file.write_text("".join(f"{i.decode()} {(y + 1) % 7 + 1}\n"
                                  for i, y in zip(ids, full.labels)))
    cfg = ml_collections.ConfigDict(dict(
        name="synthetic_fer", config="tiny", data_dir=str(data_dir), train_split="train",
        eval_split="test", fold=-1, num_folds=10, holdout_fraction=0.0,
        train_label_file=str(label_file), imbalance_factor=4.0, label_noise=0.25))
    train, evaluation = open_train_and_eval(cfg)
    np.testing.assert_array_equal(evaluation.labels, test.labels)
    from_file = (full.labels + 1) % 7
    expected = protocols.long_tailed_counts(np.bincount(from_file, minlength=7), 4.0)
    assert len(train) == expected.sum()
    # The records' own labels, through the file, then 25 % swapped.
    record_labels = np.array([train.source[i]["label"] for i in range(len(train))])
    assert np.bincount((record_labels + 1) % 7, minlength=7).tolist() == expected.tolist()
    assert np.sum(train.labels != (record_labels + 1) % 7) == round(0.25 * len(train))
    # The train pipeline yields the protocol's labels, not the records'.
    data = pipeline.train_dataset(train.source, train.labels, global_batch_size=len(train),
                                  image_size=8)
    batch = next(iter(data.dataset))
    drawn = np.sort(batch["label"])
    np.testing.assert_array_equal(drawn, np.sort(train.labels))


def test_the_real_rafdb_label_file_reads_as_a_training_label_file(rafdb_label_file):
    """EAC's noise files share this format: the clean file gives RAF-DB's training counts."""
    table = protocols.read_label_file(rafdb_label_file, 7)
    train_names = sorted(n for n in table if n.startswith("train_"))
    labels = protocols.labels_from_file(train_names, rafdb_label_file, 7)
    assert np.bincount(labels, minlength=7).tolist() == RAFDB_TRAIN
