"""grain input pipelines over TFDS ArrayRecord data sources.

The host only reads, decodes and resizes; random augmentation runs on the accelerator
inside the jitted step (`ferjax.data.augment`). Train batches come from an index stream
chosen by the sampler (uniform epochs, class-balanced or BBN-reversed draws), sliced per
process; eval batches are padded with `mask = 0` rows so that every test example counts
exactly once on any number of processes.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from typing import Any, Callable, Sequence

import grain
import numpy as np
from PIL import Image

from ferjax.losses.rebalance import reversed_sampling_probabilities
from ferjax.registry import Registry

try:  # TFDS also decodes with OpenCV when it is installed
    import cv2
except ImportError:  # pragma: no cover - opencv is a dependency, PIL is the fallback
    cv2 = None

# A sampler maps the (K,) training class counts to the (K,) probabilities with which each
# draw picks a class (then one of its examples uniformly), or to None for shuffled epochs.
SAMPLERS: Registry[Callable[[np.ndarray], np.ndarray | None]] = Registry("sampler")


@SAMPLERS.register("uniform")
def uniform_epochs(counts: np.ndarray) -> None:
    """Every example once per epoch, in a fresh shuffled order each epoch."""
    return None


@SAMPLERS.register("class_balanced")
def class_balanced(counts: np.ndarray) -> np.ndarray:
    """Every class present equally often."""
    present = (counts > 0).astype(np.float64)
    return present / present.sum()


SAMPLERS.register("reversed")(reversed_sampling_probabilities)  # BBN: P(c) ∝ n_max / n_c


@dataclasses.dataclass(frozen=True)
class ReadExample:
    """Index -> {'image': uint8 (S, S, 3), 'label': int32} from a random-access source;
    the label is `labels[index]` when given (training labels a protocol changed, see
    `ferjax.data.protocols`), else the record's. Images are resized with `resize_method`."""
    source: Any
    image_size: int
    labels: np.ndarray | None = None
    resize_method: str = "bilinear"

    def __call__(self, index: int) -> dict:
        record = self.source[int(index)]
        label = record["label"] if self.labels is None else self.labels[int(index)]
        return {"image": resize(record["image"], self.image_size, self.resize_method),
                "label": np.int32(label)}


_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def resize(image: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """Square resize of an (H, W, C) uint8 image (no-op when already size x size), method
    'bilinear' or 'bicubic'.

    Bicubic is PIL's (Keys' cubic, a = -0.5, as `augment.resize_batch`'s; OpenCV's has
    a = -0.75). Bilinear enlarging uses OpenCV (a dependency; 2-10x faster than PIL, and
    within one grey level of it). Shrinking uses PIL, whose filters widen with the scale
    (antialiasing) like the torchvision Resize of the reference code and
    `augment.resize_batch`; OpenCV's bilinear samples 4 pixels and aliases (up to 133 grey
    levels off on fine detail, tests).
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[:2] == (size, size):
        return image
    if method not in _PIL_FILTERS:
        raise ValueError(f"resize method {method!r}; expected one of {sorted(_PIL_FILTERS)}")
    if method == "bilinear" and cv2 is not None and max(image.shape[:2]) <= size:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(image).resize((size, size), _PIL_FILTERS[method]))


@dataclasses.dataclass(frozen=True)
class DrawByClass:
    """random_map: (stream position, rng) -> a source index drawn class-first.

    A class is drawn with `class_probs`, then one of its examples uniformly (with
    replacement, independently per draw), as BBN's reversed sampler and the
    class-balanced sampler do.
    """
    class_probs: np.ndarray
    members: tuple  # per class: np.ndarray of source indices

    def __call__(self, position: int, rng: np.random.Generator) -> int:
        cls = rng.choice(len(self.class_probs), p=self.class_probs)
        return int(self.members[cls][rng.integers(len(self.members[cls]))])


def index_stream(labels: np.ndarray, sampler: str, seed: int) -> grain.MapDataset:
    """An endless stream of source indices, drawn by the registered `sampler`; each epoch
    is len(labels) long."""
    n = len(labels)
    counts = np.bincount(labels, minlength=int(labels.max()) + 1)
    class_probs = SAMPLERS.get(sampler)(counts)
    if class_probs is None:
        return grain.MapDataset.range(n).seed(seed).shuffle().repeat()
    members = tuple(np.flatnonzero(labels == c) for c in range(len(counts)))
    draw = DrawByClass(np.asarray(class_probs, np.float64), members)
    return grain.MapDataset.range(n).repeat().seed(seed).random_map(draw)


@dataclasses.dataclass(frozen=True)
class ReadPair:
    """(uniform index, second-stream index) -> one example with '_rev' twins."""
    read: ReadExample

    def __call__(self, pair) -> dict:
        a, b = self.read(pair[0]), self.read(pair[1])
        return {"image": a["image"], "label": a["label"],
                "image_rev": b["image"], "label_rev": b["label"]}


@dataclasses.dataclass(frozen=True)
class LocalChunk:
    """Global batch index -> this process's slice of it, read and stacked."""
    stream: grain.MapDataset
    global_batch: int
    local_batch: int
    process_index: int
    read: Any

    def __call__(self, batch_index: int) -> dict:
        start = batch_index * self.global_batch + self.process_index * self.local_batch
        return stack_examples([self.read(self.stream[start + i])
                               for i in range(self.local_batch)])


@dataclasses.dataclass(frozen=True)
class TrainData:
    """What the loop needs to know about the train stream."""
    batches: grain.MapDataset       # global batch index -> this process's batch
    num_examples: int
    steps_per_epoch: int
    class_counts: np.ndarray
    read_options: grain.ReadOptions
    num_workers: int
    prefetch: int

    def dataset_from(self, start_batch: int) -> grain.IterDataset:
        """The stream from global batch `start_batch` on: a run resumed at step s reads
        from batch s (one batch per step), so no iterator position needs saving."""
        ids = self.batches[start_batch:].to_iter_dataset(self.read_options)
        if self.num_workers > 0:
            ids = ids.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.num_workers,
                                             per_worker_buffer_size=self.prefetch),
                worker_init_fn=ignore_ctrl_c)
        return ids

    @property
    def dataset(self) -> grain.IterDataset:
        return self.dataset_from(0)


def train_dataset(source, labels: np.ndarray, *, global_batch_size: int, image_size: int,
                  sampler: str = "uniform", second_sampler: str | None = None, seed: int = 0,
                  num_workers: int = 0, process_index: int = 0, process_count: int = 1,
                  read_threads: int = 8, prefetch: int = 2,
                  resize_method: str = "bilinear") -> TrainData:
    """The endless training stream of host-local batches, resumable at any batch.

    Args:
      source: random-access TFDS data source of the train split.
      labels: (N,) labels of the source, in source order (to build samplers).
      second_sampler: if set (BBN: 'reversed'), each batch also carries 'image_rev' and
        'label_rev' drawn by this sampler.
      num_workers: grain worker processes (0: read in this process).
      resize_method: 'bilinear' or 'bicubic', for records not already image_size.
    Yields (through `iter(TrainData.dataset_from(first_batch))`) dicts of numpy arrays: image uint8
      (B, S, S, 3), label int32 (B,), [image_rev, label_rev], with B the per-process batch.
    """
    if global_batch_size % process_count:
        raise ValueError(f"batch size {global_batch_size} does not divide over "
                         f"{process_count} processes")
    labels = np.asarray(labels, np.int64)
    local_batch = global_batch_size // process_count
    steps_per_epoch = len(labels) // global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {len(labels)} examples, fewer than one batch "
                         f"of {global_batch_size} (config.train.batch_size)")
    read = ReadExample(source, image_size, labels, resize_method)
    stream = index_stream(labels, sampler, seed)
    if second_sampler:
        second = index_stream(labels, second_sampler, seed + 1)
        stream = grain.experimental.ZipMapDataset([stream, second])
        read_fn: Any = ReadPair(read)
    else:
        read_fn = read
    # Global batch b holds stream elements [b·G, (b+1)·G); process p reads its contiguous
    # share, so the global batch is the same whatever the number of processes.
    chunks = grain.MapDataset.range(len(stream) // global_batch_size).map(
        LocalChunk(stream, global_batch_size, local_batch, process_index, read_fn))
    counts = np.bincount(labels, minlength=int(labels.max()) + 1)
    return TrainData(chunks, len(labels), steps_per_epoch, counts,
                     grain.ReadOptions(num_threads=read_threads,
                                       prefetch_buffer_size=local_batch * prefetch),
                     num_workers, prefetch)


def ignore_ctrl_c(worker_index: int, worker_count: int) -> None:
    """Grain workers leave Ctrl-C to the training process, which saves a checkpoint and
    then closes them (a terminal sends SIGINT to every process of the group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclasses.dataclass(frozen=True)
class ReadOrPad:
    """Padded position -> a real example (mask 1) or a zero example (mask 0)."""
    read: ReadExample
    num_examples: int
    process_index: int
    process_count: int

    def __call__(self, position: int) -> dict:
        index = self.process_index + position * self.process_count
        if index < self.num_examples:
            ex = self.read(index)
            return {**ex, "mask": np.float32(1.0), "index": np.int32(index)}
        size = self.read.image_size
        return {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(0),
                "mask": np.float32(0.0), "index": np.int32(-1)}


def eval_dataset(source, *, global_batch_size: int, image_size: int, process_index: int = 0,
                 process_count: int = 1, read_threads: int = 8) -> tuple[grain.IterDataset, int]:
    """One pass over a split in padded batches; returns (dataset, number of batches).

    Every process runs the same number of batches; padding rows have mask 0 and index -1.
    """
    if global_batch_size % process_count:
        raise ValueError(f"eval batch size {global_batch_size} does not divide over "
                         f"{process_count} processes")
    local_batch = global_batch_size // process_count
    n = len(source)
    per_process = math.ceil(n / process_count)
    num_batches = max(1, math.ceil(per_process / local_batch))
    positions = grain.MapDataset.range(num_batches * local_batch)
    ds = positions.map(ReadOrPad(ReadExample(source, image_size), n, process_index,
                                 process_count)).batch(local_batch)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                prefetch_buffer_size=local_batch * 2)), num_batches


def stack_examples(examples: Sequence[dict]) -> dict:
    """Stacks a list of example dicts into a batch dict."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
