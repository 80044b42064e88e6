"""Shared machinery of the ferjax TFDS builders.

Every dataset stores `image` (8-bit RGB), `label` (canonical order, spec §5.6) and a
stable `id`; its metadata records the dataset-native class names and the native ->
canonical mapping. Images that cannot be read are skipped and counted (or are fatal
with `on_bad_image='fail'`); a split that comes out empty is an error.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import logging
import multiprocessing
import os
import pathlib
import sys
from typing import Any, Callable, Iterable, Iterator

import tensorflow_datasets as tfds
from PIL import Image

from ferjax.data.images import BadImageError, is_plain_rgb_jpeg, open_rgb, to_rgb8
from ferjax.data.labels import canonical_classes

log = logging.getLogger("ferjax.data")

BAD_IMAGE_POLICIES = ("skip", "fail")


@dataclasses.dataclass(eq=False)
class FerConfig(tfds.core.BuilderConfig):
    """A builder config with the number of canonical classes it keeps (7 or 8)."""
    num_classes: int = 7


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Image bytes that ferjax itself encoded in the builder's ENCODING: stored unchanged."""
    data: bytes


class LazyImage:
    """An image read only when its example is encoded (in a worker process, when the
    builder encodes in workers): `load()` returns it as a PIL image or raises
    BadImageError naming the file. Subclasses must be picklable."""

    def load(self) -> Image.Image:
        raise NotImplementedError


@dataclasses.dataclass
class Example:
    """One example before encoding: `image` is a file path, `LazyImage`, PIL image, encoded
    bytes (checked and re-encoded) or `Encoded` (stored as is)."""
    key: str
    image: Any
    label: int
    extra: dict = dataclasses.field(default_factory=dict)


class FerBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the FER builders; subclasses define `_split_examples(manual_dir)`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First ferjax release."}
    SOURCE_CLASSES: tuple[str, ...] = ()       # dataset-native class names, native order
    SOURCE_TO_CANONICAL: tuple[int, ...] = ()  # native index -> canonical index
    ENCODING = "jpeg"
    NEEDS_MANUAL_DIR = True
    # Decode, check and encode images in one worker process per core (`map_in_order`):
    # for builders whose examples point at image files. Builders whose examples arrive
    # decoded or encoded already gain nothing from shipping them to workers.
    ENCODE_IN_WORKERS = True

    def __init__(self, *, on_bad_image: str = "skip", **kwargs):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image={on_bad_image!r}; expected {BAD_IMAGE_POLICIES}")
        self.on_bad_image = on_bad_image
        self.skipped: dict[str, list[str]] = {}
        super().__init__(**kwargs)

    @property
    def num_classes(self) -> int:
        return getattr(self.builder_config, "num_classes", 7)

    def _extra_features(self) -> dict:
        """Features beyond image / label / id."""
        return {}

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.ENCODING),
            "label": tfds.features.ClassLabel(names=canonical_classes(self.num_classes)),
            "id": tfds.features.Text(),
            **self._extra_features(),
        }
        mapping = {name: canonical_classes(8)[c]
                   for name, c in zip(self.SOURCE_CLASSES, self.SOURCE_TO_CANONICAL)}
        info = self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(source_classes=list(self.SOURCE_CLASSES),
                                            source_to_canonical=mapping))
        # Before a dataset is prepared, TFDS looks for its metadata on TFDS's own bucket
        # (never there for these datasets, and off in TFDS by default) and leaves an empty
        # temporary folder behind each time.
        info.initialize_from_bucket = lambda: None
        return info

    # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size,
    # ...)" before a build and "... downloaded and prepared ..." after it: nothing is
    # downloaded here, and its log already says which dataset it generates and where.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        log.info("%s %s is ready in %s; later runs read it from there", self.name,
                 self.version, self.data_dir)

    # -- generation ---------------------------------------------------------------------

    def _split_generators(self, dl_manager):
        manual_dir = pathlib.Path(dl_manager.manual_dir) if self.NEEDS_MANUAL_DIR else None
        return {split: self._generate_examples(split, examples)
                for split, examples in self._split_examples(manual_dir).items()}

    def _split_examples(self, manual_dir: pathlib.Path | None) -> dict[str, Iterable[Example]]:
        raise NotImplementedError(f"{type(self).__name__} must define _split_examples")

    def _generate_examples(self, split: str,
                           examples: Iterable[Example]) -> Iterator[tuple[str, dict]]:
        skipped = self.skipped.setdefault(split, [])
        count = 0
        encode = functools.partial(encoded_example, encoding=self.ENCODING)
        encoded = map_in_order(encode, examples) if self.ENCODE_IN_WORKERS else map(
            encode, examples)
        for key, features, error in encoded:
            if error is not None:
                if self.on_bad_image == "fail":
                    raise BadImageError(error)
                skipped.append(error)
                log.warning("skipping: %s", error)
                continue
            count += 1
            yield key, features
        if skipped:
            log.warning("%s/%s: skipped %d unreadable images (first: %s)", self.name, split,
                        len(skipped), skipped[0])
        if count == 0:
            raise ValueError(f"{self.name}: split {split!r} came out empty"
                             + (f" ({len(skipped)} images were unreadable, first: {skipped[0]})"
                                if skipped else "; check the manual_dir layout"))


def stored_image(image: Any, encoding: str) -> bytes:
    """The bytes the TFDS Image feature (`encoding`: 'jpeg' or 'png') stores for `image`:
    an `Encoded` image's own, a plain RGB JPEG file's own (for 'jpeg'), else the image
    decoded, converted to 8-bit RGB and saved as the Image feature saves a PIL image.

    Raises:
      BadImageError: naming the file, if it is missing, corrupt or truncated.
    """
    if isinstance(image, Encoded):
        return image.data
    if isinstance(image, LazyImage):
        image = image.load()
    if isinstance(image, Image.Image):
        decoded = to_rgb8(image)
    else:
        decoded = open_rgb(image)  # checks every file fully, also those stored unchanged
        if isinstance(image, (str, pathlib.Path)) and encoding == "jpeg" \
                and is_plain_rgb_jpeg(image):
            return pathlib.Path(image).read_bytes()
    buffer = io.BytesIO()
    decoded.save(buffer, format=encoding)
    return buffer.getvalue()


def encoded_example(example: Example, *, encoding: str) -> tuple[str, dict | None, str | None]:
    """(key, features with the image encoded, None), or (key, None, why the image cannot be
    read): the unit of work of a build's worker processes."""
    try:
        image = stored_image(example.image, encoding)
    except BadImageError as e:
        return example.key, None, str(e)
    return example.key, {"image": image, "label": example.label, "id": example.key,
                         **example.extra}, None


def usable_cores() -> int:
    """The CPU cores this process may run on (all of them where the OS cannot say)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def main_module_reimports_safely() -> bool:
    """Whether spawned workers may re-import the main module, as they do on start: true for
    modules run with `python -m` (ferjax's own entry points guard their work behind
    `if __name__ == "__main__"`) and interactive sessions. A script run by path may lack that
    guard, and then each worker would run it again."""
    main = sys.modules.get("__main__")
    return (main is None or getattr(main, "__spec__", None) is not None
            or not hasattr(main, "__file__"))


def map_in_order(fn: Callable[[Any], Any], items: Iterable[Any], *, min_parallel: int = 1000,
                 workers: int | None = None) -> Iterator[Any]:
    """fn over items, in order, in `workers` processes (default: one per CPU core, at most
    16) when there are at least `min_parallel` items and 2 or more workers (for fewer items
    the workers' start costs more than it saves), and in this process otherwise or when
    the main module is a script (`main_module_reimports_safely`). Items are read as the
    workers take them. `fn` and the items must be picklable (a module-level function or a
    partial of one). Workers are spawned, not forked: the caller may hold JAX's threads,
    which a fork can deadlock."""
    workers = workers or min(usable_cores(), 16)
    items = iter(items)
    head = list(itertools.islice(items, min_parallel))
    if len(head) < min_parallel or workers < 2 or not main_module_reimports_safely():
        yield from map(fn, itertools.chain(head, items))
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(fn, itertools.chain(head, items), chunksize=32)


def require_file(path: pathlib.Path, what: str, instructions: str) -> pathlib.Path:
    """Returns `path` if it exists, else raises FileNotFoundError naming it and what to do."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}\n\n{instructions.strip()}")
    return path
