"""AffectNet (Mollahosseini et al. 2017), manually annotated part, 7 or 8 classes."""

from __future__ import annotations

import csv
import pathlib

from PIL import Image

from ferjax.data.builders.base import Example, FerBuilder, FerConfig, LazyImage, require_file
from ferjax.data.images import BadImageError, open_rgb

INSTRUCTIONS = """
AffectNet is licensed: request it from the authors (http://mohammadmahoor.com/affectnet/),
then place in the manual_dir

  training.csv, validation.csv            (the manually annotated label files)
  Manually_Annotated_Images/<subDirectory_filePath>   (the images the csv rows name)

Faces are cropped with the csv box (face_x, face_y, face_width, face_height). Expression
codes 8-10 (None, Uncertain, No-Face) are dropped, and contempt (7) in the 7-class config.
"""
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated_compressed", "images", ".")
MAX_SIDE = 256  # crops larger than this are downscaled before storing


class Affectnet(FerBuilder):
    """AffectNet; 'train' from training.csv and 'test' from validation.csv (500 per class)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [FerConfig(name="7", description="7 basic expressions", num_classes=7),
                       FerConfig(name="8", description="7 basic + contempt", num_classes=8)]
    SOURCE_CLASSES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger",
                      "Contempt")
    SOURCE_TO_CANONICAL = (6, 3, 4, 0, 1, 2, 5, 7)

    def _split_examples(self, manual_dir):
        image_root = next((manual_dir / d for d in IMAGE_DIRS
                           if (manual_dir / d).is_dir() and d != "."), manual_dir)
        return {split: self._rows(require_file(manual_dir / f, "AffectNet label file",
                                               INSTRUCTIONS), image_root)
                for split, f in (("train", "training.csv"), ("test", "validation.csv"))}

    def _rows(self, csv_path: pathlib.Path, image_root: pathlib.Path):
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            needed = {"subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                      "expression"}
            if not needed <= set(reader.fieldnames or ()):
                raise ValueError(f"{csv_path}: missing columns "
                                 f"{sorted(needed - set(reader.fieldnames or ()))}")
            for lineno, row in enumerate(reader, start=2):
                try:
                    code = int(float(row["expression"]))
                except ValueError:
                    raise ValueError(f"{csv_path}:{lineno}: expression "
                                     f"{row['expression']!r} is not a number") from None
                if not 0 <= code <= 10:
                    raise ValueError(f"{csv_path}:{lineno}: expression code {code} outside 0..10")
                if code >= self.num_classes:  # 8-10 are not expressions; 7 = contempt
                    continue
                box = tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width",
                                                          "face_height"))
                path = image_root / row["subDirectory_filePath"]
                yield Example(row["subDirectory_filePath"], _LazyCrop(path, box),
                              self.SOURCE_TO_CANONICAL[code])


class _LazyCrop(LazyImage):
    """The face crop, decoded and cut only when the example is encoded (in a worker)."""

    def __init__(self, path: pathlib.Path, box: tuple[int, int, int, int]):
        self.path, self.box = path, box

    def load(self) -> Image.Image:
        img = open_rgb(self.path)
        x, y, w, h = self.box
        if w <= 0 or h <= 0:
            raise BadImageError(f"empty face box {self.box} for {self.path}")
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, img.width), min(y + h, img.height)
        if x1 <= x0 or y1 <= y0:
            raise BadImageError(f"face box {self.box} lies outside {self.path} "
                                f"({img.width}x{img.height})")
        crop = img.crop((x0, y0, x1, y1))
        if max(crop.size) > MAX_SIDE:
            scale = MAX_SIDE / max(crop.size)
            crop = crop.resize((max(1, round(crop.width * scale)),
                                max(1, round(crop.height * scale))), Image.BILINEAR)
        return crop
