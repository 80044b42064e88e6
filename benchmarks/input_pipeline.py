"""Host input-pipeline throughput: ferjax's grain pipeline over ArrayRecord against a
PyTorch DataLoader over JPEG files, on RAF-DB-like 100x100 JPEG faces.

    python -m benchmarks.input_pipeline --images 3000 --workers 2 --size 224

Both decode the JPEG, resize to --size and batch; the DataLoader also normalises to float
(the usual torchvision-style transform chain), ferjax normalises on the accelerator
instead. The same number of worker processes on both sides. Results are appended to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from benchmarks.common import append_result, machine_summary
from ferjax import console


def make_jpegs(root: pathlib.Path, count: int) -> list[tuple[str, int]]:
    """RAF-DB-like aligned faces: 100x100 RGB JPEGs in class folders."""
    from ferjax.data import synthetic
    from ferjax.data.labels import CANONICAL_CLASSES
    files = []
    for i in range(count):
        label = i % 7
        path = root / "train" / CANONICAL_CLASSES[label] / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.draw_face(label, synthetic.example_rng(0, "train", i), 100).save(path,
                                                                                  quality=90)
        files.append((str(path), label))
    return files


def ferjax_rate(data_dir: str, manual_dir: str, batch: int, size: int, workers: int,
                batches: int, warmup: int) -> float:
    from absl import flags
    flags.FLAGS.mark_as_parsed()
    from ferjax.data import build, pipeline
    from ferjax.data.sources import open_split
    builder = build.build("image_folder", manual_dir=manual_dir, data_dir=data_dir)
    split = open_split(builder, "train")
    data = pipeline.train_dataset(split.source, split.labels, global_batch_size=batch,
                                  image_size=size, num_workers=workers, seed=0)
    it = iter(data.dataset)
    for _ in range(warmup):  # start-up (worker spawn, filling the prefetch) is not throughput
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - start)
    if hasattr(it, "close"):
        it.close()
    return rate


class JpegDataset:
    """The usual PyTorch Dataset: PIL decode, resize, to float tensor, normalise."""

    def __init__(self, files, size):
        self.files, self.size = files, size
        self.mean = np.array([0.485, 0.456, 0.406], np.float32)
        self.std = np.array([0.229, 0.224, 0.225], np.float32)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torch
        path, label = self.files[i]
        img = Image.open(path).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        x = (np.asarray(img, np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), label


def torch_rate(files, batch: int, size: int, workers: int, batches: int,
               warmup: int) -> float:
    import torch
    loader = torch.utils.data.DataLoader(JpegDataset(files, size), batch_size=batch,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    start, done = None, -warmup
    while done < batches:
        if done == 0 and start is None:
            start = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
    return batches * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = console.command_parser("benchmarks.input_pipeline", __doc__)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=150,
                        help="timed batches; a short window mostly reads the workers' "
                             "prefetched batches")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches first")
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        files = make_jpegs(tmp / "jpegs", args.images)
        ours = ferjax_rate(str(tmp / "tfds"), str(tmp / "jpegs"), args.batch, args.size,
                           args.workers, args.batches, args.warmup)
        theirs = None if args.no_torch else torch_rate(files, args.batch, args.size,
                                                       args.workers, args.batches, args.warmup)
    row = (f"| {args.size} | {args.batch} | {args.workers} | {ours:.0f} | "
           + (f"{theirs:.0f} | {ours / theirs:.2f} |" if theirs else "— | — |"))
    print(row)
    append_result("Input pipeline (100x100 JPEG -> decoded, resized, batched)",
                  machine_summary(),
                  "| out px | batch | workers | ferjax img/s | DataLoader img/s | ratio |\n"
                  "|---|---|---|---|---|---|", [row],
                  f"`python -m benchmarks.input_pipeline --images {args.images} --workers "
                  f"{args.workers} --size {args.size} --batches {args.batches} --warmup "
                  f"{args.warmup}`; {args.batches} batches after {args.warmup} untimed "
                  "ones; grain over ArrayRecord (JPEG bytes as stored by the image_folder "
                  "builder) vs torch DataLoader with PIL over the same JPEG files.")


if __name__ == "__main__":
    from ferjax import malloc_tuning
    print(malloc_tuning.relaunch_under_tcmalloc(), file=sys.stderr)  # as ferjax.main
    main()
