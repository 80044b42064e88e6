"""synthetic_fer: the embedded default dataset; drawn on the fly, nothing to download."""

from __future__ import annotations

import dataclasses
import functools

import tensorflow_datasets as tfds

from ferjax.data import synthetic
from ferjax.data.builders.base import Encoded, Example, FerBuilder, FerConfig, map_in_order
from ferjax.data.labels import canonical_classes


@dataclasses.dataclass(eq=False)
class SyntheticConfig(FerConfig):
    """train_size: training images (RAF-DB-shaped long tail); test_per_class: balanced
    test; validation_per_class: balanced validation (model selection);
    longtail_test_size: long-tailed test (RAF-DB size: 3,068, rounded to 3,067);
    image_size: side in pixels; imbalance_ratio: max/min class count; label_noise: fraction
    of training labels moved to a confusable class; min_intensity: weakest expression
    (0 = neutral, 1 = full); param_noise_scale: spread of the face parameters (both set how
    much the classes overlap); seed: everything is derived from it."""
    train_size: int = 4000
    test_per_class: int = 300
    validation_per_class: int = 100
    longtail_test_size: int = 3068
    image_size: int = 64
    imbalance_ratio: float = 17.0
    label_noise: float = 0.1
    min_intensity: float = synthetic.MIN_INTENSITY
    param_noise_scale: float = synthetic.PARAM_NOISE_SCALE
    seed: int = 0


class SyntheticFer(FerBuilder):
    """Procedural faces, 7 classes; `clean_label` keeps the label before noise.

    Splits: 'train' (long-tailed, noisy labels), 'test' (class-balanced) and
    'test_longtail' (long-tailed like RAF-DB's test set, clean labels), on which overall
    and mean class accuracy differ the way they do on real FER benchmarks, and 'validation'
    (class-balanced, clean labels) for choosing hyperparameters without the test splits.
    Each example's random stream is keyed by (seed, split, index), so adding a split
    leaves the others unchanged.
    """

    NEEDS_MANUAL_DIR = False
    ENCODING = "png"
    ENCODE_IN_WORKERS = False  # its own worker pool draws and encodes
    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: expressions at intensity 0.35-1, full parameter noise.",
        "1.1.0": "Default classes overlap less (intensity 0.6-1, 0.6x parameter noise) and "
                 "the test splits are larger (300 per class; 3,067 long-tailed); the 1.0.0 "
                 "default is the 'hard' config.",
        "1.2.0": "Adds a class-balanced 'validation' split (100 per class, clean labels); "
                 "the other splits are identical to 1.1.0.",
    }
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default", description="4,000 train / 700 validation / 2,100 "
                        "balanced + 3,067 long-tailed test, 64 px"),
        SyntheticConfig(name="rafdb_size", description="RAF-DB sized: 12,271 train / 3,068 test, "
                        "100 px", train_size=12271, test_per_class=438, image_size=100,
                        validation_per_class=200),
        SyntheticConfig(name="hard", description="1.0.0's default: weaker, noisier "
                        "expressions (4,000 train / 700 + 700 test, 64 px)",
                        test_per_class=100, longtail_test_size=700, min_intensity=0.35,
                        validation_per_class=50,
                        param_noise_scale=1.0),
        SyntheticConfig(name="tiny", description="for tests: 140 train / 70 test, 32 px",
                        train_size=140, test_per_class=10, longtail_test_size=70,
                        validation_per_class=5,
                        image_size=32),
    ]
    SOURCE_CLASSES = canonical_classes(7)
    SOURCE_TO_CANONICAL = tuple(range(7))

    def _extra_features(self):
        return {"clean_label": tfds.features.ClassLabel(names=canonical_classes(7))}

    def _split_examples(self, manual_dir):
        return {split: self._examples(split)
                for split in ("train", "validation", "test", "test_longtail")}

    def _examples(self, split):
        cfg = self.builder_config
        labels = synthetic.split_labels(split, train_size=cfg.train_size,
                                        test_per_class=cfg.test_per_class,
                                        longtail_test_size=cfg.longtail_test_size,
                                        validation_per_class=cfg.validation_per_class,
                                        imbalance_ratio=cfg.imbalance_ratio, seed=cfg.seed)
        draw = functools.partial(
            synthetic.encoded_example, seed=cfg.seed, split=split, size=cfg.image_size,
            min_intensity=cfg.min_intensity, param_noise_scale=cfg.param_noise_scale,
            label_noise=cfg.label_noise if split == "train" else 0.0, encoding=self.ENCODING)
        jobs = [(index, int(clean)) for index, clean in enumerate(labels)]
        for (index, clean), (image, label) in zip(jobs, map_in_order(draw, jobs)):
            yield Example(f"{split}_{index:06d}", Encoded(image), label, {"clean_label": clean})
