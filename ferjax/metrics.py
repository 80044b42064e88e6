"""Evaluation metrics (pure functions of arrays), metric writers and the confusion-matrix picture."""

from __future__ import annotations

import io
import json
import logging
from typing import Mapping, Sequence

import numpy as np

from ferjax import files

log = logging.getLogger("ferjax")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted; rows with mask 0 ignored."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    if mask is not None:
        keep = np.asarray(mask) > 0
        labels, predictions = labels[keep], predictions[keep]
    flat = labels * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes,
                                                                         num_classes)


def accuracy_summary(cm: np.ndarray) -> dict:
    """Metrics of a (K, K) confusion matrix (rows true, columns predicted).

    Returns overall accuracy; per-class accuracy (recall, NaN for a class absent from the
    evaluated set) and its unweighted mean over the classes present, mean class accuracy;
    per-class precision (0 for a class never predicted) and F1 (NaN for an absent class),
    and macro F1, the mean F1 over the classes present; the support of each class.
    """
    cm = np.asarray(cm, np.float64)
    support, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    total = support.sum()
    present = support > 0
    recall = np.divide(hits, support, out=np.full(len(cm), np.nan), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(len(cm)), where=predicted > 0)
    # F1 = 2PR / (P + R) = 2·hits / (support + predicted), 0 when hits are.
    f1 = np.divide(2 * hits, support + predicted, out=np.full(len(cm), np.nan), where=present)
    nan = float("nan")
    return {"accuracy": float(np.trace(cm) / total) if total else nan,
            "mean_class_accuracy": float(np.nanmean(recall)) if present.any() else nan,
            "macro_f1": float(np.nanmean(f1)) if present.any() else nan,
            "per_class_accuracy": recall, "per_class_precision": precision,
            "per_class_f1": f1, "support": support.astype(np.int64)}


HEADLINE = ("accuracy", "mean_class_accuracy", "macro_f1")  # what every report leads with


def headline(summary: dict) -> dict[str, float]:
    """The HEADLINE scalars of an `accuracy_summary`."""
    return {name: summary[name] for name in HEADLINE}


def by_class(class_names: Sequence[str], values: np.ndarray) -> dict[str, float | None]:
    """{class name: value} of a per-class array for JSON: NaN (a class absent from the
    evaluated set) becomes None."""
    return {name: None if np.isnan(v) else float(v) for name, v in zip(class_names, values)}


def history_summary(values: Sequence[float], k: int = 5) -> dict:
    """Last, best and mean of the last k of a metric over evaluations (spec §7.13)."""
    if not values:
        return {}
    v = np.asarray(values, np.float64)
    return {"last": float(v[-1]), "best": float(np.nanmax(v)),
            f"mean_last_{k}": float(np.mean(v[-k:]))}


def per_class_table(summary: dict, class_names: Sequence[str]) -> str:
    """A plain-text table of per-class accuracy (recall), precision, F1 and support, in %."""
    def cell(value):
        return f"{'-' if np.isnan(value) else f'{100 * value:.2f}':>10}"

    lines = [f"{'class':<12}{'accuracy':>10}{'precision':>10}{'F1':>10}{'support':>10}"]
    for name, acc, prec, f1, n in zip(class_names, summary["per_class_accuracy"],
                                      summary["per_class_precision"], summary["per_class_f1"],
                                      summary["support"]):
        lines.append(f"{name:<12}{cell(acc)}{cell(prec)}{cell(f1)}{int(n):>10}")
    lines.append(f"{'mean class':<12}{cell(summary['mean_class_accuracy'])}{'':>10}"
                 f"{cell(summary['macro_f1'])}")
    lines.append(f"{'overall':<12}{cell(summary['accuracy'])}{'':>20}"
                 f"{int(summary['support'].sum()):>10}")
    return "\n".join(lines)


def save_confusion_png(cm: np.ndarray, class_names: Sequence[str], path: str,
                       title: str = "") -> None:
    """Writes `confusion_picture` as a PNG, replacing `path` in one step (local or gs://)."""
    buffer = io.BytesIO()
    confusion_picture(cm, class_names, title).save(buffer, format="PNG")
    files.write_bytes(path, buffer.getvalue())


def confusion_picture(cm: np.ndarray, class_names: Sequence[str], title: str = ""):
    """The row-normalised (K, K) confusion matrix as a PIL image: cell shade = share of the
    true class, text = percent and count; overall and mean class accuracy under the title.
    Column names too wide for a cell alternate between two lines."""
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(cm, np.int64)
    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    summary = accuracy_summary(cm)
    img = Image.new("RGB", (1, 1), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    cell = 64

    def fit(text: str, room: float) -> str:
        while len(text) > 1 and d.textlength(text, font=font) > room:
            text = text[:-2] + "."
        return text

    staggered = any(d.textlength(n, font=font) > cell - 6 for n in class_names)
    heads = [fit(n, (2 if staggered else 1) * cell - 6) for n in class_names]
    left = 12 + int(max(d.textlength(fit(n, 150), font=font) for n in class_names))
    top = (48 if title else 30) + (48 if staggered else 34)
    width, height = max(left + k * cell + 10, 420), top + k * cell + 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    line = 8
    if title:
        d.text((10, line), title, fill="black", font=font)
        line += 18
    d.text((10, line), f"accuracy {100 * summary['accuracy']:.2f} %   mean class accuracy "
           f"{100 * summary['mean_class_accuracy']:.2f} %   ({int(cm.sum())} images)",
           fill="black", font=font)
    d.text((left, top - (48 if staggered else 32)), "predicted ->", fill="black", font=font)
    for j, name in enumerate(heads):
        lift = 30 if staggered and j % 2 else 16
        d.text((left + j * cell + 4, top - lift), name, fill="black", font=font)
    for i, name in enumerate(class_names):
        d.text((6, top + i * cell + cell // 2 - 6), fit(name, 150), fill="black", font=font)
        for j in range(k):
            shade = int(255 * (1 - share[i, j]))
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255),
                        outline=(200, 200, 200))
            ink = "white" if share[i, j] > 0.5 else "black"
            d.text((x0 + 6, y0 + 18), f"{100 * share[i, j]:.1f}%", fill=ink, font=font)
            d.text((x0 + 6, y0 + 34), f"{cm[i, j]}", fill=ink, font=font)
    d.text((6, top + k * cell + 12), "rows: true class (normalised to 100 %)", fill="black",
           font=font)
    return img


class MetricWriter:
    """Scalars to a JSONL file and TensorBoard event files (tensorboardX, no TensorFlow).

    Only the writing process (process 0) should create one.
    """

    def __init__(self, workdir: str, enable_tensorboard: bool = True, purge_after: int = 0):
        """`purge_after`: the step a resumed run restarts from; TensorBoard then hides the
        points after it that the stopped run wrote (the resumed run writes them again)."""
        files.makedirs(workdir)
        # In cloud storage each upload rewrites the whole file: at most once a minute.
        self._jsonl = files.LineLog(files.join(workdir, "metrics.jsonl"), upload_every_s=60.0)
        self._tb = None
        if enable_tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(files.join(workdir, "tensorboard"),
                                     purge_step=purge_after + 1)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.append(json.dumps({"step": int(step), **clean}))
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, f"```\n{text}\n```", int(step))

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An (H, W, 3) uint8 picture, to TensorBoard only."""
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class NullWriter:
    """What non-zero processes get: the same interface, writing nothing."""

    def write_scalars(self, step, scalars):
        pass

    def write_text(self, step, tag, text):
        pass

    def write_image(self, step, tag, image):
        pass

    def flush(self):
        pass

    def close(self):
        pass
