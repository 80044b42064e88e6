"""Convert a FER dataset into TFDS ArrayRecord, without TensorFlow.

    python -m ferjax.data.build --dataset rafdb --manual_dir ~/Downloads/RAF-DB/basic
    python -m ferjax.data.build --dataset affectnet --config 8 --manual_dir DIR
    python -m ferjax.data.build --dataset synthetic_fer          # nothing to download

Output goes to --data_dir (default $FERJAX_DATA_DIR or ~/ferjax_datasets). TFDS writes
into a temporary folder and renames it when complete, so an interrupted build leaves no
half-written dataset behind; the next build names the temporary folder it left (which can
be large: AffectNet) so that you can delete it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys

import numpy as np
import tensorflow_datasets as tfds

from ferjax import console, files
from ferjax.data.builders import BUILDERS, get_builder_class

log = logging.getLogger("ferjax.data")


def _not_built_yet(record: logging.LogRecord) -> bool:
    """Drops TFDS's 'Variant folder … has no dataset_info.json': it looks for built
    versions of a dataset that is not built yet, which ferjax then builds or names in a
    clear error. On a first run it was the only warning, and a puzzling one."""
    return not str(record.msg).startswith("Variant folder %s has no")


logging.getLogger("absl").addFilter(_not_built_yet)  # TFDS logs through absl


def default_data_dir() -> str:
    return os.path.expanduser(os.environ.get("FERJAX_DATA_DIR", "~/ferjax_datasets"))


def make_builder(dataset: str, config: str | None = None, data_dir: str | None = None,
                 on_bad_image: str = "skip"):
    """The TFDS builder object for `dataset` / `config` under `data_dir`."""
    cls = get_builder_class(dataset)
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config is None and names:
        config = names[0]
    if names and config not in names:
        raise ValueError(f"dataset {dataset!r} has configs {names}, not {config!r}")
    data_dir = data_dir or default_data_dir()
    if files.is_url(data_dir):
        raise ValueError(
            f"data_dir {data_dir} is in cloud storage, where ArrayRecord files cannot be read "
            "(google/array_record#120): copy the dataset to local disk first, e.g. "
            f"`gcloud storage rsync -r {data_dir} ~/ferjax_datasets`, as launch/tpu_vm.sh "
            "does on every TPU host")
    return cls(data_dir=data_dir, config=config, on_bad_image=on_bad_image)


def check_manual_dir(dataset: str, manual_dir: str | None) -> pathlib.Path | None:
    """The manual_dir as a path, or a clear error with the download instructions."""
    cls = get_builder_class(dataset)
    if not cls.NEEDS_MANUAL_DIR:
        return None
    help_text = cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
    if not manual_dir:
        raise FileNotFoundError(f"dataset {dataset!r} needs --manual_dir (the folder you "
                                f"downloaded):\n\n{help_text}")
    path = pathlib.Path(manual_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"manual_dir {path} does not exist.\n\n{help_text}")
    if not any(path.iterdir()):
        raise FileNotFoundError(f"manual_dir {path} is empty.\n\n{help_text}")
    return path


def build(dataset: str, *, config: str | None = None, manual_dir: str | None = None,
          data_dir: str | None = None, on_bad_image: str = "skip", overwrite: bool = False):
    """Builds (or reuses) the dataset and returns its prepared builder."""
    path = check_manual_dir(dataset, manual_dir)
    builder = make_builder(dataset, config, data_dir, on_bad_image)
    if overwrite and os.path.isdir(builder.data_dir):
        import shutil
        shutil.rmtree(builder.data_dir)
        builder = make_builder(dataset, config, data_dir, on_bad_image)
    if not builder.is_prepared():
        _warn_about_interrupted_builds(builder)
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(path) if path else None,
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    if not console.interactive():  # TFDS's bars would pile up in a log file
        tfds.display_progress_bar(False)
    builder.download_and_prepare(download_config=download_config, file_format="array_record")
    return builder


def interrupted_builds(builder) -> list[pathlib.Path]:
    """Temporary folders TFDS left next to `builder`'s version folder when a build of it was
    interrupted (TFDS names them incomplete.<random>_<version>)."""
    version_dir = pathlib.Path(builder.data_dir)
    return sorted(version_dir.parent.glob(f"incomplete.*_{version_dir.name}"))


def _warn_about_interrupted_builds(builder) -> None:
    # Not deleted automatically: another process may be building into one right now.
    for path in interrupted_builds(builder):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        log.warning("%s is left from an interrupted build (%.1f MB); delete it once no other "
                    "build of this dataset is running", path, size / 2**20)


class CorruptDatasetError(ValueError):
    """A prepared split's record files cannot be read back (damaged or truncated)."""


def rebuild_command(builder) -> str:
    """The command that rebuilds `builder`'s dataset from scratch."""
    config = f" --config {builder.builder_config.name}" if builder.builder_config else ""
    data_dir = pathlib.Path(builder.data_dir).parents[2 if builder.builder_config else 1]
    return (f"python -m ferjax.data.build --dataset {builder.name}{config} --data_dir "
            f"{data_dir} --overwrite" + (" --manual_dir ..." if getattr(
                builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) else ""))


def read_field(builder, split: str, field: str) -> np.ndarray:
    """One feature (e.g. 'label', 'subject') of every record of a prepared split, in record
    order, read without decoding images. Every record is read, so a damaged record file
    fails here, at the start of a run, with a CorruptDatasetError naming it."""
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    values = []
    for i in range(len(source)):
        try:
            values.append(source[i][field])
        except RuntimeError as e:  # array_record's error for a bad block or a short file
            record_files = sorted(pathlib.Path(builder.data_dir).glob(
                f"*-{split}.array_record*"))
            raise CorruptDatasetError(
                f"{builder.name} split {split!r} is damaged at record {i} of {len(source)} "
                f"({str(e).splitlines()[0]}); files: "
                f"{', '.join(map(str, record_files)) or f'none left in {builder.data_dir}'}. "
                f"Rebuild it: {rebuild_command(builder)}") from None
    return np.asarray(values)


def label_counts(builder, split: str) -> np.ndarray:
    """Per-class counts of a prepared split, read without decoding images."""
    return np.bincount(read_field(builder, split, "label").astype(np.int64),
                       minlength=builder.info.features["label"].num_classes)


def summary(builder) -> str:
    names = builder.info.features["label"].names
    lines = [f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''} "
             f"at {builder.data_dir}"]
    width = max(map(len, builder.info.splits), default=0)
    for split in builder.info.splits:
        counts = label_counts(builder, split)
        lines.append(f"  {split:<{width}} {int(counts.sum()):>7}  " +
                     "  ".join(f"{n}={c}" for n, c in zip(names, counts)))
    for split, skipped in getattr(builder, "skipped", {}).items():
        if skipped:
            lines.append(f"  {split}: skipped {len(skipped)} unreadable images, e.g. {skipped[0]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = console.command_parser("ferjax.data.build", __doc__)
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--config", default=None, help="builder config (e.g. 7 or 8 classes)")
    parser.add_argument("--manual_dir", default=None, help="the folder you downloaded")
    parser.add_argument("--data_dir", default=None, help="where TFDS datasets are written")
    parser.add_argument("--on_bad_image", default="skip", choices=["skip", "fail"],
                        help="skip (and count) unreadable images, or stop at the first")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        builder = build(args.dataset, config=args.config, manual_dir=args.manual_dir,
                        data_dir=args.data_dir, on_bad_image=args.on_bad_image,
                        overwrite=args.overwrite)
        print(summary(builder))  # reads every record back: a damaged file fails here
    except (FileNotFoundError, ValueError, KeyError) as e:
        console.print_error(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
