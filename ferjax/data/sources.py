"""Opening the train / eval splits named by `config.data`, building them if needed."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ferjax.data import build as build_lib
from ferjax.data import protocols
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
    return build_lib.read_field(builder, split, "label").astype(np.int64)


HOLDOUT = "holdout"  # eval split name: the part of train_split held out by holdout_fraction


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A bool mask over `labels` marking round(fraction · n_c) examples of every class c
    (at least one where the class has two or more), drawn with a fixed seed so that every
    run of a config holds out the same images whatever config.seed is."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = int(round(fraction * len(members)))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        held[rng.permutation(members)[:n]] = True
    return held


def open_split(builder, split: str, field: str | None = None) -> Split:
    """The whole split `split` of `builder`; labels are read once, images on access. A
    split the dataset lacks is reported naming `field`, the setting it came from."""
    if split not in builder.info.splits:
        if field:
            raise KeyError(f"{field} has {split!r}; {builder.name} has splits "
                           f"{list(builder.info.splits)}")
        raise KeyError(f"{builder.name} has splits {list(builder.info.splits)}, not {split!r}")
    return Split(builder.as_data_source(split), _labels(builder, split),
                 tuple(builder.info.features["label"].names))


def part_of(whole: Split, keep: np.ndarray) -> Split:
    """The examples of `whole` where `keep` (a bool mask over them) is True."""
    indices = np.flatnonzero(keep)
    return Split(Subset(whole.source, indices), whole.labels[indices], whole.class_names)


def divide_split(builder, split: str, whole: Split, fold: int = -1, num_folds: int = 10,
                 holdout_fraction: float = 0.0) -> tuple[Split, Split]:
    """(training part, held-out part) of `whole`, the split named `split`: with `fold >= 0`
    subject-independent CV parts (CK+), else a per-class held-out part of
    `holdout_fraction` (a validation set). Reuses `whole`'s labels instead of reading the
    split again, which matters for AffectNet's 280k records."""
    if fold >= 0:
        keep = subject_folds(build_lib.read_field(builder, split, "subject"), num_folds) != fold
    elif holdout_fraction > 0:
        keep = ~stratified_holdout(whole.labels, holdout_fraction)
    else:
        raise ValueError("divide_split needs fold >= 0 or holdout_fraction > 0")
    return part_of(whole, keep), part_of(whole, ~keep)


def _check_division(data_cfg) -> tuple[int, float]:
    fold, fraction = data_cfg.get("fold", -1), data_cfg.get("holdout_fraction", 0.0)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.data.holdout_fraction={fraction}; expected 0 <= value < 1")
    if fold >= 0 and fraction > 0:
        raise ValueError("config.data.fold and config.data.holdout_fraction are both set; "
                         "cross-validation folds and a held-out part do not combine")
    return fold, fraction


def _check_holdout(split: str, data_cfg, field: str) -> None:
    """'holdout' names a part of the training split only when holdout_fraction > 0."""
    if split == HOLDOUT and _check_division(data_cfg)[1] <= 0:
        raise ValueError(f"{field} names 'holdout', which needs config.data.holdout_fraction "
                         "> 0 (e.g. 0.1)")


def _open(builder, data_cfg, eval_split: str,
          field: str = "config.data.eval_split") -> tuple[Split, Split]:
    """(training part, evaluation split), reading config.data.train_split once for both;
    `field` names where `eval_split` came from in errors."""
    fold, fraction = _check_division(data_cfg)
    _check_holdout(eval_split, data_cfg, field)
    if fold < 0:  # a CV fold is evaluated on its held-out part, whatever eval_split says
        check_eval_split(builder, data_cfg, eval_split, field)
    whole = open_split(builder, data_cfg.train_split, "config.data.train_split")
    if fold < 0 and fraction <= 0:
        train, held = whole, None
    else:
        train, held = divide_split(builder, data_cfg.train_split, whole, fold,
                                   data_cfg.get("num_folds", 10), fraction)
    # A CV fold is always evaluated on its held-out part; 'holdout' names that part.
    if fold >= 0 or eval_split == HOLDOUT:
        return train, held
    return train, open_split(builder, eval_split)


def check_eval_split(builder, data_cfg, split: str, field: str) -> None:
    """Raises naming `field` unless `split` can be evaluated, as `open_eval_split` would
    open it: a split of the dataset, or 'holdout' with config.data.holdout_fraction > 0."""
    _check_holdout(split, data_cfg, field)
    if split != HOLDOUT and split not in builder.info.splits:
        raise KeyError(f"{field} has {split!r}; {builder.name} has splits "
                       f"{list(builder.info.splits)} (or 'holdout')")


def open_eval_split(builder, data_cfg, split: str,
                    field: str = "config.data.eval_split") -> Split:
    """The split to evaluate: a named split, the held-out CV fold when config.data.fold >= 0,
    or 'holdout', the part of config.data.train_split that training never sees. Errors
    name `field`, where `split` came from."""
    fold, _ = _check_division(data_cfg)
    if fold < 0 and split != HOLDOUT:
        check_eval_split(builder, data_cfg, split, field)
        return open_split(builder, split)  # no need to read the train split
    return _open(builder, data_cfg, split, field)[1]


PROTOCOL_FIELDS = ("train_label_file", "imbalance_factor", "label_noise")


def with_protocols(builder, data_cfg, train: Split) -> Split:
    """`train` after the noisy-label and imbalance protocols `data_cfg` asks for
    (`ferjax.data.protocols`); its labels are then the ones to train on."""
    if not any(data_cfg.get(field, None) for field in PROTOCOL_FIELDS):
        return train
    ids = None
    if data_cfg.get("train_label_file", ""):
        ids = build_lib.read_field(builder, data_cfg.train_split, "id")
        if isinstance(train.source, Subset):
            ids = ids[train.source.indices]
    keep, labels = protocols.apply(ids, train.labels, data_cfg, train.num_classes)
    source = train.source if keep.all() else part_of(train, keep).source  # noise keeps all
    return Split(source, labels, train.class_names)


def open_train_and_eval(data_cfg) -> tuple[Split, Split]:
    """(training split, evaluation split) of `data_cfg`, building the dataset if needed.
    The training split's labels may differ from its records' (`with_protocols`)."""
    builder = prepared_builder(data_cfg)
    train, evaluation = _open(builder, data_cfg, data_cfg.eval_split)
    return with_protocols(builder, data_cfg, train), evaluation
