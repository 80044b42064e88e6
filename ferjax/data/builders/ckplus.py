"""CK+ (Lucey et al. 2010): the last frames of the 327 labelled sequences, with subject ids."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ferjax.data.builders.base import Example, FerBuilder, FerConfig, require_file

INSTRUCTIONS = """
CK+ is licensed: request it from its authors, then unpack it so that the manual_dir holds

  cohn-kanade-images/S005/001/S005_001_00000001.png ...
  Emotion/S005/001/S005_001_00000011_emotion.txt ...
"""


@dataclasses.dataclass(eq=False)
class CkplusConfig(FerConfig):
    """last_frames: frames taken from the end of each labelled sequence;
    neutral_first_frame: also store each sequence's first frame as neutral."""
    last_frames: int = 3
    neutral_first_frame: bool = False


class Ckplus(FerBuilder):
    """CK+ in one 'train' split; `subject` lets the pipeline build subject-independent folds."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    ENCODING = "png"
    BUILDER_CONFIGS = [
        CkplusConfig(name="last3", description="last 3 frames, 7 classes with contempt "
                     "(981 images); canonical 8-class space, neutral unused", num_classes=8),
        CkplusConfig(name="last3_neutral", description="plus the first frame as neutral",
                     num_classes=8, neutral_first_frame=True),
    ]
    SOURCE_CLASSES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness",
                      "surprise")
    SOURCE_TO_CANONICAL = (6, 5, 7, 2, 1, 3, 4, 0)

    def _extra_features(self):
        return {"subject": tfds.features.Text()}

    def _split_examples(self, manual_dir):
        images = require_file(manual_dir / "cohn-kanade-images", "CK+ image folder", INSTRUCTIONS)
        emotions = require_file(manual_dir / "Emotion", "CK+ Emotion folder", INSTRUCTIONS)
        return {"train": self._examples(images, emotions)}

    def _examples(self, images, emotions):
        cfg = self.builder_config
        for label_file in sorted(emotions.glob("S*/*/*_emotion.txt")):
            subject, sequence = label_file.parent.parent.name, label_file.parent.name
            text = label_file.read_text().strip()
            try:
                code = int(float(text))
            except ValueError:
                raise ValueError(f"{label_file}: emotion code {text!r} is not a number") from None
            if not 1 <= code <= 7:
                raise ValueError(f"{label_file}: emotion code {code} outside 1..7")
            frames = sorted((images / subject / sequence).glob("*.png"))
            if not frames:
                raise FileNotFoundError(f"{label_file} labels sequence {subject}/{sequence} "
                                        f"but {images / subject / sequence} has no frames")
            chosen = [(f, self.SOURCE_TO_CANONICAL[code]) for f in frames[-cfg.last_frames:]]
            if cfg.neutral_first_frame:
                chosen.insert(0, (frames[0], 6))
            for frame, label in chosen:
                yield Example(frame.stem, frame, label, {"subject": subject})


def subject_folds(subjects, num_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Fold index (N,) per example such that no subject appears in two folds."""
    subjects = np.asarray(subjects)
    unique = np.unique(subjects)
    if unique.size < num_folds:
        raise ValueError(f"{unique.size} subjects cannot fill {num_folds} folds")
    order = np.random.default_rng(seed).permutation(unique)
    fold_of = {s: i % num_folds for i, s in enumerate(order)}
    return np.array([fold_of[s] for s in subjects], np.int64)
