"""RandAugment throughput: ferjax's on-device op against timm's way, Pillow on the host.

    python -m benchmarks.rand_augment --batch 32 --size 112

ferjax: the jitted augmentation of mek_swin (flip, RandAugment, normalise, erase) on uint8
batches of RAF-DB's 100 px faces resized to --size, timed with and without the
'rand_augment' op; the difference is RandAugment's cost. Host: what a timm DataLoader
worker does per image, a bicubic resize to --size and two RandAugment layers with the same
Pillow calls timm makes (`pil_op`, also the reference of tests/test_randaugment.py), in
this one process: divide by the worker count for its share of a pipeline. Results are
appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import pathlib
import random
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from benchmarks.common import append_result, machine_summary
from ferjax import console

FILL = (128, 128, 128)


def pil_op(img: Image.Image, name: str, level: float, sign: float,
           resample=Image.BICUBIC, increasing: bool = True) -> Image.Image:
    """timm's RandAugment op `name` (ferjax.data.randaugment.OPS) at `level` (0..10) with
    sign ±1 on a PIL RGB image, through the Pillow calls timm makes."""
    frac = level / 10.0
    w, h = img.size
    affine = {"shear_x": (1, sign * frac * 0.3, 0, 0, 1, 0),
              "shear_y": (1, 0, 0, sign * frac * 0.3, 1, 0),
              "translate_x": (1, 0, sign * frac * 0.45 * w, 0, 1, 0),
              "translate_y": (1, 0, 0, 0, 1, sign * frac * 0.45 * h)}
    if name in affine:
        return img.transform(img.size, Image.AFFINE, affine[name], resample=resample,
                             fillcolor=FILL)
    if name == "rotate":
        return img.rotate(sign * frac * 30.0, resample=resample, fillcolor=FILL)
    if name == "posterize":
        bits = int(frac * 4)
        return ImageOps.posterize(img, 4 - bits if increasing else bits)
    if name == "solarize":
        threshold = int(frac * 256)
        return ImageOps.solarize(img, 256 - threshold if increasing else threshold)
    if name == "solarize_add":
        add = int(frac * 110)
        return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
    simple = {"auto_contrast": ImageOps.autocontrast, "equalize": ImageOps.equalize,
              "invert": ImageOps.invert}
    if name in simple:
        return simple[name](img)
    enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}
    factor = max(0.1, 1.0 + sign * frac * 0.9) if increasing else frac * 1.8 + 0.1
    return enhancer[name](img).enhance(factor)


def pil_rand_augment(img: Image.Image, rng: random.Random, layers: int = 2) -> Image.Image:
    """rand-m9-mstd0.5-inc1 as timm draws it: ops with replacement, each with p 0.5."""
    from ferjax.data.randaugment import OPS
    for name in rng.choices(OPS, k=layers):
        if rng.random() > 0.5:
            continue
        level = min(10.0, max(0.0, rng.gauss(9.0, 0.5)))
        img = pil_op(img, name, level, -1.0 if rng.random() > 0.5 else 1.0)
    return img


def time_host(faces: np.ndarray, size: int) -> float:
    """Seconds per image: bicubic resize + RandAugment in Pillow, one process."""
    rng = random.Random(0)
    images = [Image.fromarray(f) for f in faces]
    start = time.perf_counter()
    for img in images:
        np.asarray(pil_rand_augment(img.resize((size, size), Image.BICUBIC), rng))
    return (time.perf_counter() - start) / len(images)


def time_device(faces: np.ndarray, size: int, ops: tuple, rounds: int = 10) -> float:
    """Median seconds per batch of the jitted augmentation `ops`."""
    import jax
    import jax.numpy as jnp

    from ferjax.data import augment
    from ferjax.presets import load_config_file
    config = load_config_file(pathlib.Path(__file__).resolve().parents[1] / "configs" /
                              "rafdb.py", "mek_swin")
    config.augment.ops = ops
    parsed = augment.parse_ops(config.augment)
    run = jax.jit(lambda key, x: augment.augment_batch(key, x, parsed, size,
                                                       config.data.train_resize))
    batch = jnp.asarray(faces)
    run(jax.random.key(0), batch).block_until_ready()
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        run(jax.random.key(i + 1), batch).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> None:
    parser = console.command_parser("benchmarks.rand_augment", __doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--host_images", type=int, default=256)
    args = parser.parse_args(argv)
    from ferjax.data import synthetic
    faces = np.stack([np.asarray(synthetic.draw_face(i % 7, synthetic.example_rng(0, "train", i),
                                                     100))
                      for i in range(max(args.batch, args.host_images))])
    with_ra = time_device(faces[:args.batch], args.size,
                          ("flip", "rand_augment", "normalize", "erase"))
    without = time_device(faces[:args.batch], args.size, ("flip", "normalize", "erase"))
    host = time_host(faces[:args.host_images], args.size)
    ra_device = with_ra - without
    rows = [f"| ferjax, on device, in the step | {args.batch} | {args.size} | "
            f"{1e3 * with_ra:.1f} (without RandAugment {1e3 * without:.1f}) | "
            f"{args.batch / ra_device:,.0f} |",
            f"| Pillow as timm, one host process | 1 | {args.size} | "
            f"{1e3 * host:.2f} per image (with the resize) | {1 / host:,.0f} |"]
    for row in rows:
        print(row)
    append_result(
        "RandAugment (rand-m9-mstd0.5-inc1)", machine_summary(),
        "| where | batch | px | ms per batch | RandAugment images/s |\n|---|---|---|---|---|",
        rows,
        f"`python -m benchmarks.rand_augment --batch {args.batch} --size {args.size} "
        f"--host_images {args.host_images}`; ferjax: median of 10 calls of the jitted "
        "augmentation of 100 px uint8 faces (bicubic resize on device, flip, RandAugment, "
        "normalise, erase), RandAugment's images/s from the difference with and without "
        f"it; Pillow: {args.host_images} faces, bicubic resize and two RandAugment layers "
        "each, one process.")


if __name__ == "__main__":
    main()
