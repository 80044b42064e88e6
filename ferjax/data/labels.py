"""Class names, the canonical label order (spec §5.6) and label-file parsers.

Canonical order follows RAF-DB: 0 surprise, 1 fear, 2 disgust, 3 happiness, 4 sadness,
5 anger, 6 neutral, then 7 contempt for 8-class datasets.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterator

import numpy as np

CANONICAL_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral",
                     "contempt")


def canonical_classes(num_classes: int) -> tuple[str, ...]:
    """The first `num_classes` (7 or 8) canonical class names."""
    if num_classes not in (7, 8):
        raise ValueError(f"FER datasets have 7 or 8 classes, not {num_classes}")
    return CANONICAL_CLASSES[:num_classes]


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    """One row of a label file: image file name, split and canonical 0-based label."""
    name: str
    split: str
    label: int


def label_lines(path: str | pathlib.Path, num_classes: int, what: str
                ) -> Iterator[tuple[int, str, int]]:
    """(line number, name, 0-based canonical label) of each non-empty '<name> <label>' line
    of a label file, labels 1..K in canonical order (RAF-DB's format).

    Raises:
      FileNotFoundError: "`what` not found: path".
      ValueError: a malformed line or a label outside 1..K, naming file:line.
    """
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<image> <label>', got {line!r}")
        name, raw = parts
        try:
            label = int(raw)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: label {raw!r} is not an integer") from None
        if not 1 <= label <= num_classes:
            raise ValueError(f"{path}:{lineno}: label {label} outside 1..{num_classes} "
                             f"({', '.join(CANONICAL_CLASSES[:num_classes])})")
        yield lineno, name, label - 1


def parse_rafdb_labels(path: str | pathlib.Path) -> list[LabelledImage]:
    """Parses RAF-DB's `EmoLabel/list_patition_label.txt`.

    Each line is `<name> <label>` with label 1..7 (Surprise, Fear, Disgust, Happiness,
    Sadness, Anger, Neutral), already in canonical order after subtracting 1; the split is
    the `train_` / `test_` prefix of the name.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: a malformed line, an unknown label or an unknown split, naming file:line.
    """
    rows = []
    for lineno, name, label in label_lines(path, 7, "RAF-DB label file"):
        split = name.split("_", 1)[0]
        if split not in ("train", "test"):
            raise ValueError(f"{path}:{lineno}: image {name!r} starts with neither "
                             "'train_' nor 'test_'")
        rows.append(LabelledImage(name, split, label))
    return rows


def class_histogram(labels, num_classes: int) -> np.ndarray:
    """(K,) int64 counts of each class among `labels`."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}: "
                         f"{sorted(set(labels[(labels < 0) | (labels >= num_classes)].tolist()))}")
    return np.bincount(labels, minlength=num_classes)
