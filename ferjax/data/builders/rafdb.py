"""RAF-DB basic (Li et al. 2017): 7 classes, official aligned 100x100 faces."""

from __future__ import annotations

import collections
import pathlib

from ferjax.data.builders.base import Example, FerBuilder, require_file
from ferjax.data.labels import parse_rafdb_labels

# Spec §5.1, verified against the official label file.
EXPECTED_COUNTS = {
    "train": (1290, 281, 717, 4772, 1982, 705, 2524),
    "test": (329, 74, 160, 1185, 478, 162, 680),
}

INSTRUCTIONS = """
RAF-DB is licensed: request it from the authors (http://www.whdeng.cn/raf/model1.html),
then download the *basic* part and unpack it so that the manual_dir holds

  EmoLabel/list_patition_label.txt
  Image/aligned/train_00001_aligned.jpg ... test_3068_aligned.jpg

(a `basic/` folder with that content inside manual_dir also works). Then run
  python -m ferjax.main ... or python -m ferjax.data.build --dataset rafdb --manual_dir DIR
"""


def _root(manual_dir: pathlib.Path) -> pathlib.Path:
    for root in (manual_dir, manual_dir / "basic"):
        if (root / "EmoLabel" / "list_patition_label.txt").exists():
            return root
    return manual_dir


class Rafdb(FerBuilder):
    """RAF-DB basic expression set: 12,271 train and 3,068 test aligned faces."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    SOURCE_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
    SOURCE_TO_CANONICAL = (0, 1, 2, 3, 4, 5, 6)

    def _split_examples(self, manual_dir):
        root = _root(manual_dir)
        label_file = require_file(root / "EmoLabel" / "list_patition_label.txt",
                                  "RAF-DB label file", INSTRUCTIONS)
        rows = parse_rafdb_labels(label_file)
        counts = collections.defaultdict(lambda: [0] * 7)
        for r in rows:
            counts[r.split][r.label] += 1
        for split, expected in EXPECTED_COUNTS.items():
            if tuple(counts[split]) != expected:
                raise ValueError(f"{label_file}: {split} class counts {tuple(counts[split])} "
                                 f"differ from RAF-DB basic's {expected}; is this the basic "
                                 "list_patition_label.txt?")
        image_dir = require_file(root / "Image" / "aligned", "RAF-DB aligned image folder",
                                 INSTRUCTIONS)

        def examples(split):
            for r in rows:
                if r.split == split:
                    stem = r.name.rsplit(".", 1)[0]
                    yield Example(r.name, image_dir / f"{stem}_aligned.jpg", r.label)

        return {"train": examples("train"), "test": examples("test")}
