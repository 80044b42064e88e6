"""Evaluation metrics against hand-computed values, and the per-class table."""

import numpy as np
import pytest

from ferjax import metrics

# Rows true, columns predicted: class 0 has 6 examples (5 right, 1 taken for class 1),
# class 1 has 4 (2 right, 2 taken for class 0), class 2 none and is never predicted.
CM = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]])


def test_confusion_matrix_counts_pairs_and_skips_masked_rows():
    labels, predictions = np.array([0, 0, 1, 2, 1]), np.array([0, 1, 1, 2, 0])
    cm = metrics.confusion_matrix(labels, predictions, 3, mask=np.array([1, 1, 1, 1, 0]))
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])


def test_accuracy_summary_by_hand():
    s = metrics.accuracy_summary(CM)
    assert s["accuracy"] == pytest.approx(7 / 10)
    np.testing.assert_allclose(s["per_class_accuracy"], [5 / 6, 2 / 4, np.nan])
    assert s["mean_class_accuracy"] == pytest.approx((5 / 6 + 2 / 4) / 2)  # class 2 absent
    np.testing.assert_allclose(s["per_class_precision"], [5 / 7, 2 / 3, 0.0])
    # F1 = 2PR / (P + R): class 0: 2·(5/7)(5/6) / (5/7 + 5/6) = 10/13; class 1: 4/7.
    np.testing.assert_allclose(s["per_class_f1"], [10 / 13, 4 / 7, np.nan])
    assert s["macro_f1"] == pytest.approx((10 / 13 + 4 / 7) / 2)
    np.testing.assert_array_equal(s["support"], [6, 4, 0])
    assert metrics.by_class(["a", "b", "c"], s["per_class_f1"]) == {
        "a": pytest.approx(10 / 13), "b": pytest.approx(4 / 7), "c": None}


def test_accuracy_summary_invariances():
    s = metrics.accuracy_summary(CM)
    # Scaling every count leaves every rate unchanged.
    scaled = metrics.accuracy_summary(7 * CM)
    for key in ("accuracy", "mean_class_accuracy", "macro_f1"):
        assert scaled[key] == pytest.approx(s[key])
    # Relabelling the classes permutes the per-class values and keeps the means.
    order = [2, 0, 1]
    permuted = metrics.accuracy_summary(CM[np.ix_(order, order)])
    np.testing.assert_allclose(permuted["per_class_f1"], s["per_class_f1"][order])
    assert permuted["macro_f1"] == pytest.approx(s["macro_f1"])
    # A perfect classifier scores 1 everywhere; mean class accuracy ignores class sizes.
    perfect = metrics.accuracy_summary(np.diag([90, 10, 1]))
    assert perfect["accuracy"] == perfect["mean_class_accuracy"] == perfect["macro_f1"] == 1.0
    lopsided = metrics.accuracy_summary(np.array([[90, 0], [10, 0]]))  # always class 0
    assert lopsided["accuracy"] == pytest.approx(0.9)
    assert lopsided["mean_class_accuracy"] == pytest.approx(0.5)
    assert lopsided["macro_f1"] == pytest.approx((180 / 190 + 0) / 2)


def test_empty_confusion_matrix_gives_nan_not_an_error():
    s = metrics.accuracy_summary(np.zeros((3, 3), np.int64))
    assert all(np.isnan(s[k]) for k in ("accuracy", "mean_class_accuracy", "macro_f1"))


def test_history_summary_last_best_and_mean_of_last_k():
    assert metrics.history_summary([0.5, 0.7, 0.6, 0.65], k=2) == {
        "last": 0.65, "best": 0.7, "mean_last_2": pytest.approx(0.625)}
    assert metrics.history_summary([]) == {}


def test_per_class_table_lines():
    table = metrics.per_class_table(metrics.accuracy_summary(CM), ["happy", "sad", "fear"])
    lines = table.splitlines()
    assert lines[0].split() == ["class", "accuracy", "precision", "F1", "support"]
    assert lines[1].split() == ["happy", "83.33", "71.43", "76.92", "6"]
    assert lines[3].split() == ["fear", "-", "0.00", "-", "0"]
    assert lines[4].split() == ["mean", "class", "66.67", "67.03"]
    assert lines[5].split() == ["overall", "70.00", "10"]


def test_confusion_picture_shades_cells_by_row_share():
    cm = np.array([[4, 0, 0], [1, 3, 0], [0, 0, 0]])  # class 3 never seen
    for names in (["a", "b", "c"], ["happiness", "sadness", "surprise"]):  # staggered heads
        img = np.asarray(metrics.confusion_picture(cm, names, "title")).astype(int)
        # Cell fills are (s, s, 255) with s = 255 · (1 − row share); count each s by area.
        blue = (img[..., 2] == 255) & (img[..., 0] == img[..., 1]) & (img[..., 0] < 255)
        values, areas = np.unique(img[..., 0][blue], return_counts=True)
        filled = set(values[areas > 1500].tolist())  # a 64 px cell less its text
        assert filled == {0, int(255 * 0.75), int(255 * 0.25)}  # 100 %, 25 %, 75 %
