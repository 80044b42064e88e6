"""Training-set protocols of the noisy-label and imbalance experiments (spec §3.8, §5.1).

Each changes only the training part, never what is evaluated, and each is the same for
every run of a config whatever `config.seed` is (fixed seed), so that runs differing in
method or seed see the same corrupted training set:

- `config.data.train_label_file`: labels from a file, e.g. EAC's RAF-DB `noise01.txt`
  (10 % noisy), in RAF-DB's label-file format, matched to the records by image name;
- `config.data.imbalance_factor`: a long-tailed subset, n'_k = ⌊n_max · IF^(−r_k/(K−1))⌋
  for the class of frequency rank r_k (at most n_k);
- `config.data.label_noise`: that fraction of the training labels each replaced by one of
  the other classes, uniformly (symmetric noise).

They apply in that order, after the division into folds or a held-out part.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from ferjax.data.labels import label_lines

log = logging.getLogger("ferjax.data")

SEED = 0  # the protocols' own seed: the same training set for every config.seed


def read_label_file(path: str | pathlib.Path, num_classes: int) -> dict[str, int]:
    """{image name: 0-based canonical label} of a file of '<name> <label>' lines, labels
    1..K in canonical order (RAF-DB's list_patition_label.txt and EAC's noise files).

    Raises FileNotFoundError, or ValueError naming file:line for a malformed line, a label
    outside 1..K or a name listed twice.
    """
    labels: dict[str, int] = {}
    for lineno, name, label in label_lines(path, num_classes, "config.data.train_label_file"):
        if name in labels:
            raise ValueError(f"{path}:{lineno}: {name} is listed twice")
        labels[name] = label
    return labels


def labels_from_file(ids, path: str | pathlib.Path, num_classes: int) -> np.ndarray:
    """The file's labels of the records named `ids` (N,), in their order. Every record must
    be in the file (names it has beyond them, such as test images, are ignored)."""
    table = read_label_file(path, num_classes)
    names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"config.data.train_label_file: {path} lacks {len(missing)} of the "
                         f"{len(names)} training images, e.g. {missing[:3]}; is it a label "
                         "file of this dataset?")
    return np.asarray([table[n] for n in names], np.int64)


def long_tailed_counts(counts, imbalance_factor: float) -> np.ndarray:
    """(K,) counts of the exponential profile n_max · IF^(−r/(K'−1)) over the K' classes
    present, r their rank by count (ties: lower class first); at most each class's own
    count, 0 for absent classes."""
    counts = np.asarray(counts, np.int64)
    present = np.flatnonzero(counts > 0)
    if imbalance_factor < 1:
        raise ValueError(f"config.data.imbalance_factor={imbalance_factor}; expected >= 1 "
                         "(or 0: off)")
    out = np.zeros_like(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    span = max(len(order) - 1, 1)
    for rank, cls in enumerate(order):
        target = int(np.floor(counts[order[0]] * imbalance_factor ** (-rank / span)))
        out[cls] = min(max(target, 1), counts[cls])
    return out


def long_tailed_subset(labels: np.ndarray, imbalance_factor: float,
                       seed: int = SEED) -> np.ndarray:
    """A bool mask over `labels` keeping long_tailed_counts of each class, drawn at random."""
    labels = np.asarray(labels, np.int64)
    keep_counts = long_tailed_counts(np.bincount(labels), imbalance_factor)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), bool)
    for cls, n in enumerate(keep_counts):
        keep[rng.permutation(np.flatnonzero(labels == cls))[:n]] = True
    return keep


def symmetric_label_noise(labels: np.ndarray, fraction: float, num_classes: int,
                          seed: int = SEED) -> np.ndarray:
    """`labels` with round(fraction · N) of them, drawn at random, each replaced by one of
    the other classes present in `labels`, uniformly."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.data.label_noise={fraction}; expected 0 <= value < 1")
    labels = np.asarray(labels, np.int64)
    present = np.flatnonzero(np.bincount(labels, minlength=num_classes) > 0)
    if len(present) < 2:
        raise ValueError("config.data.label_noise needs at least two classes to swap between")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(labels))[:int(round(fraction * len(labels)))]
    noisy = labels.copy()
    for i in chosen:
        others = present[present != labels[i]]
        noisy[i] = others[rng.integers(len(others))]
    return noisy


def apply(train_ids, labels: np.ndarray, data_cfg, num_classes: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """(kept mask, labels of the kept examples) of a training part after the protocols
    `data_cfg` asks for; `train_ids` (N,) is only read when a label file is given."""
    labels = np.asarray(labels, np.int64)
    keep = np.ones(len(labels), bool)
    label_file = data_cfg.get("train_label_file", "")
    if label_file:
        from_file = labels_from_file(train_ids, label_file, num_classes)
        log.info("training labels from %s: %d of %d differ from the dataset's", label_file,
                 int((from_file != labels).sum()), len(labels))
        labels = from_file
    factor = data_cfg.get("imbalance_factor", 0.0)
    if factor:
        keep = long_tailed_subset(labels, factor)
        log.info("imbalance factor %g: %d of %d training examples kept, per class %s",
                 factor, int(keep.sum()), len(labels),
                 np.bincount(labels[keep], minlength=num_classes).tolist())
    kept = labels[keep]
    noise = data_cfg.get("label_noise", 0.0)
    if noise:
        noisy = symmetric_label_noise(kept, noise, num_classes)
        log.info("label noise %g: %d of %d training labels replaced", noise,
                 int((noisy != kept).sum()), len(kept))
        kept = noisy
    return keep, kept
