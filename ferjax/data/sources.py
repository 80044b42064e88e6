"""Opening the train / eval splits named by `config.data`, building them if needed."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow_datasets as tfds

from ferjax.data import build as build_lib
from ferjax.data.builders import get_builder_class, subject_folds

log = logging.getLogger("ferjax.data")


@dataclasses.dataclass
class Split:
    """A random-access split: `source[i]` is {'image', 'label', ...}; labels in source order."""
    source: object
    labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Subset:
    """A view of a source restricted to `indices` (CK+ folds)."""
    source: object
    indices: np.ndarray

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[int(self.indices[i])]


def prepared_builder(data_cfg):
    """The TFDS builder of `data_cfg.name`, built first when absent and allowed."""
    builder = build_lib.make_builder(data_cfg.name, data_cfg.get("config", None) or None,
                                     data_cfg.get("data_dir", None) or None,
                                     data_cfg.get("on_bad_image", "skip"))
    if builder.is_prepared():
        return builder
    cls = get_builder_class(data_cfg.name)
    if not data_cfg.get("auto_build", True):
        raise FileNotFoundError(f"dataset {data_cfg.name!r} is not built under "
                                f"{builder.data_dir}; run python -m ferjax.data.build "
                                f"--dataset {data_cfg.name} ...")
    if cls.NEEDS_MANUAL_DIR and not data_cfg.get("manual_dir", None):
        raise FileNotFoundError(
            f"dataset {data_cfg.name!r} is not built under {builder.data_dir} and "
            "config.data.manual_dir is not set.\n"
            f"{cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
    log.info("building %s into %s (first use)", data_cfg.name, builder.data_dir)
    return build_lib.build(data_cfg.name, config=data_cfg.get("config", None) or None,
                           manual_dir=data_cfg.get("manual_dir", None) or None,
                           data_dir=data_cfg.get("data_dir", None) or None,
                           on_bad_image=data_cfg.get("on_bad_image", "skip"))


def _labels(builder, split: str) -> np.ndarray:
    raw = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    return np.asarray([raw[i]["label"] for i in range(len(raw))], np.int64)


def _subjects(builder, split: str) -> np.ndarray:
    raw = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    return np.asarray([raw[i]["subject"] for i in range(len(raw))])


def open_split(builder, split: str, fold: int = -1, num_folds: int = 10,
               hold_out: bool = False) -> Split:
    """A split by name; with `fold >= 0` a subject-independent CV part (CK+).

    hold_out=False gives the training folds, True the held-out fold.
    """
    if split not in builder.info.splits:
        raise KeyError(f"{builder.name} has splits {list(builder.info.splits)}, not {split!r}")
    source = builder.as_data_source(split)
    labels = _labels(builder, split)
    names = tuple(builder.info.features["label"].names)
    if fold >= 0:
        folds = subject_folds(_subjects(builder, split), num_folds)
        keep = np.flatnonzero((folds == fold) if hold_out else (folds != fold))
        return Split(Subset(source, keep), labels[keep], names)
    return Split(source, labels, names)


def open_train_and_eval(data_cfg) -> tuple[Split, Split]:
    builder = prepared_builder(data_cfg)
    fold = data_cfg.get("fold", -1)
    train = open_split(builder, data_cfg.train_split, fold, data_cfg.get("num_folds", 10), False)
    eval_split = data_cfg.eval_split if fold < 0 else data_cfg.train_split
    evals = open_split(builder, eval_split, fold, data_cfg.get("num_folds", 10), True)
    return train, evals
