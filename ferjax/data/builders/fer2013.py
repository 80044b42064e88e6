"""FER2013 (Goodfellow et al. 2013) and FERPlus (Barsoum et al. 2016) from the pixel csv."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ferjax.data.builders.base import Example, FerBuilder, FerConfig, require_file

FER_INSTRUCTIONS = """
Download fer2013.csv (Kaggle "Challenges in Representation Learning: Facial Expression
Recognition Challenge", file fer2013.tar.gz) and put fer2013.csv in the manual_dir.
"""
FERPLUS_INSTRUCTIONS = FER_INSTRUCTIONS + """
Also download fer2013new.csv from Microsoft's FERPlus repository and put it beside it.
"""
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}


def _pixels_to_image(pixels: str, where: str) -> Image.Image:
    try:
        values = np.array(pixels.split(), dtype=np.int64)
    except ValueError:
        raise ValueError(f"{where}: pixels are not all whole numbers") from None
    if values.size != 48 * 48:
        raise ValueError(f"{where}: expected 2304 grey values, got {values.size}")
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"{where}: grey values outside 0..255 ({values.min()}..{values.max()})")
    return Image.fromarray(values.reshape(48, 48).astype(np.uint8), mode="L").convert("RGB")


def _fer_rows(csv_path: pathlib.Path):
    """Yields (row_index, lineno, emotion, usage, pixels) of fer2013.csv."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)}")
        for index, row in enumerate(reader):
            yield index, index + 2, row["emotion"], row["Usage"], row["pixels"]


class Fer2013(FerBuilder):
    """FER2013: 48x48 grey faces; Training / PublicTest / PrivateTest = train / validation / test."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = FER_INSTRUCTIONS
    ENCODING = "png"
    ENCODE_IN_WORKERS = False  # pixels arrive decoded from the CSV
    SOURCE_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
    SOURCE_TO_CANONICAL = (5, 2, 1, 3, 4, 0, 6)

    def _split_examples(self, manual_dir):
        path = require_file(manual_dir / "fer2013.csv", "fer2013.csv", FER_INSTRUCTIONS)
        return {split: self._split(path, usage) for usage, split in USAGE_TO_SPLIT.items()}

    def _split(self, path, usage):
        for index, lineno, emotion, row_usage, pixels in _fer_rows(path):
            if row_usage not in USAGE_TO_SPLIT:
                raise ValueError(f"{path}:{lineno}: unknown Usage {row_usage!r}")
            if row_usage != usage:
                continue
            if emotion not in {str(i) for i in range(7)}:
                raise ValueError(f"{path}:{lineno}: emotion {emotion!r} outside 0..6")
            yield Example(f"fer{index:07d}", _pixels_to_image(pixels, f"{path}:{lineno}"),
                          self.SOURCE_TO_CANONICAL[int(emotion)])


FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF")


class Ferplus(FerBuilder):
    """FERPlus: FER2013 images with majority-vote labels of 10 annotators; votes kept.

    A face is kept when one emotion has strictly the most votes; faces whose winner is
    'unknown' or 'NF' (not a face), or whose top vote is tied, are dropped (and counted).
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = FERPLUS_INSTRUCTIONS
    ENCODING = "png"
    ENCODE_IN_WORKERS = False  # pixels arrive decoded from the CSV
    BUILDER_CONFIGS = [FerConfig(name="8", description="majority vote, 8 classes", num_classes=8),
                       FerConfig(name="7", description="majority vote, contempt dropped",
                                 num_classes=7)]
    SOURCE_CLASSES = FERPLUS_COLUMNS[:8]
    SOURCE_TO_CANONICAL = (6, 3, 0, 4, 5, 2, 1, 7)

    def _extra_features(self):
        return {"votes": tfds.features.Tensor(shape=(10,), dtype=np.float32)}

    def _split_examples(self, manual_dir):
        fer = require_file(manual_dir / "fer2013.csv", "fer2013.csv", FERPLUS_INSTRUCTIONS)
        new = require_file(manual_dir / "fer2013new.csv", "fer2013new.csv", FERPLUS_INSTRUCTIONS)
        self.dropped = {"no_majority": 0, "unknown_or_not_face": 0, "contempt": 0}
        return {split: self._split(fer, new, usage) for usage, split in USAGE_TO_SPLIT.items()}

    def _split(self, fer_path, new_path, usage):
        with open(new_path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            if len(header) < 12:
                raise ValueError(f"{new_path}: expected Usage, Image name and 10 vote columns")
            votes_rows = list(reader)
        fer_rows = list(_fer_rows(fer_path))
        if len(votes_rows) != len(fer_rows):
            raise ValueError(f"{new_path} has {len(votes_rows)} rows but {fer_path} has "
                             f"{len(fer_rows)}; they must be the matching FER2013 files")
        for (index, lineno, _, row_usage, pixels), vrow in zip(fer_rows, votes_rows):
            if row_usage != usage:
                continue
            try:
                votes = np.array([float(v) for v in vrow[2:12]], np.float32)
            except ValueError:
                raise ValueError(f"{new_path}:{lineno}: vote counts {vrow[2:12]} are not "
                                 "numbers") from None
            winner = int(np.argmax(votes))
            if np.sum(votes == votes[winner]) > 1:
                self.dropped["no_majority"] += 1
                continue
            if winner >= 8:
                self.dropped["unknown_or_not_face"] += 1
                continue
            if winner == 7 and self.num_classes == 7:
                self.dropped["contempt"] += 1
                continue
            yield Example(f"fer{index:07d}", _pixels_to_image(pixels, f"{fer_path}:{lineno}"),
                          self.SOURCE_TO_CANONICAL[winner], {"votes": votes})
