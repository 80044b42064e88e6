"""Any user data laid out as one sub-folder per class (optionally per split)."""

from __future__ import annotations

import pathlib

from ferjax.data.builders.base import Example, FerBuilder, FerConfig
from ferjax.data.images import IMAGE_SUFFIXES
from ferjax.data.labels import CANONICAL_CLASSES

INSTRUCTIONS = """
Lay out your images as  MANUAL_DIR/<split>/<class>/<image>  with splits among
train / validation / test (or just  MANUAL_DIR/<class>/<image>  for a single train split).
Class folders use the canonical names (surprise, fear, disgust, happiness, sadness, anger,
neutral, contempt) or the common aliases (happy, sad, angry, surprised, fearful, disgusted).
"""
ALIASES = {"happy": "happiness", "sad": "sadness", "angry": "anger", "surprised": "surprise",
           "fearful": "fear", "disgusted": "disgust", "afraid": "fear", "sadness": "sadness"}
SPLITS = ("train", "validation", "test")


def canonical_index(folder: pathlib.Path, num_classes: int) -> int:
    name = ALIASES.get(folder.name.lower(), folder.name.lower())
    if name not in CANONICAL_CLASSES[:num_classes]:
        raise ValueError(f"class folder {folder} is not one of "
                         f"{list(CANONICAL_CLASSES[:num_classes])} (or an alias: "
                         f"{sorted(ALIASES)})")
    return CANONICAL_CLASSES.index(name)


class FerImageFolder(FerBuilder):
    """Images from class folders; the id is the path relative to the manual_dir."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [FerConfig(name="7", num_classes=7),
                       FerConfig(name="8", num_classes=8)]
    SOURCE_CLASSES = CANONICAL_CLASSES
    SOURCE_TO_CANONICAL = tuple(range(8))

    def _split_examples(self, manual_dir):
        split_dirs = {s: manual_dir / s for s in SPLITS if (manual_dir / s).is_dir()}
        if not split_dirs:
            split_dirs = {"train": manual_dir}
        return {split: self._examples(manual_dir, d) for split, d in split_dirs.items()}

    def _examples(self, root, split_dir):
        class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        if not class_dirs:
            raise ValueError(f"{split_dir} has no class folders\n{INSTRUCTIONS}")
        for class_dir in class_dirs:
            label = canonical_index(class_dir, self.num_classes)
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield Example(str(path.relative_to(root)), path, label)
