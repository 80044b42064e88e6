"""Predict the expression of face crops with a trained workdir.

    python -m ferjax.predict --workdir runs/rafdb_mek face1.jpg face2.png
    python -m ferjax.predict --workdir runs/rafdb_mek my_faces/ --jsonl predictions.jsonl

Prints, per image, the predicted class and every class probability. Inputs are face
crops (any size or image mode), or folders searched for them; they are resized to the
model's input size and run through the model in batches. An unreadable image is reported
and skipped; the exit status is then 1.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Iterator

import numpy as np

from ferjax import compilation_cache, console
from ferjax.data.images import IMAGE_SUFFIXES


def image_paths(inputs: list[str]) -> list[str]:
    """The files in `inputs`, and the image files (by suffix, any case) under each folder,
    sorted, in the order given. A missing path stays, to be reported when it is read."""
    paths = []
    for item in inputs:
        path = pathlib.Path(item)
        if path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths


def predict_files(workdir: str, paths: list[str], which: str = "best",
                  batch_size: int = 64) -> Iterator[dict]:
    """Yields, per path in order, {'file', 'prediction', 'probabilities'} or, for an image
    that cannot be read, {'file', 'error'}. Batches are padded to `batch_size` so that the
    model compiles once."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ferjax.data import augment
    from ferjax.data.images import BadImageError, open_rgb
    from ferjax.data.pipeline import resize
    from ferjax.plan import make_recipe
    from ferjax.steps import class_probabilities
    from ferjax.workdir import restore_model

    config, model, names, _ = restore_model(workdir, which)
    recipe = make_recipe(config)
    graphdef, state = nnx.split(model)

    @jax.jit
    def probabilities(state, images):
        x = augment.augment_batch(jax.random.key(0), images, recipe.eval_ops)
        return class_probabilities(nnx.merge(graphdef, state), x, recipe.eval_flip_average)

    def flush(batch: list[tuple[str, np.ndarray]]) -> Iterator[dict]:
        images = np.stack([image for _, image in batch])
        padded = np.concatenate([images, np.repeat(images[-1:], batch_size - len(batch), 0)])
        probs = np.asarray(probabilities(state, jnp.asarray(padded)))[:len(batch)]
        for (path, _), p in zip(batch, probs):
            yield {"file": path, "prediction": names[int(np.argmax(p))],
                   "probabilities": dict(zip(names, map(float, p)))}

    batch: list[tuple[str, np.ndarray]] = []
    for path in paths:
        try:
            image = resize(np.asarray(open_rgb(path)), config.data.image_size)
        except BadImageError as e:
            if batch:  # the output keeps the order of `paths`
                yield from flush(batch)
                batch = []
            yield {"file": path, "error": str(e)}
            continue
        batch.append((path, image))
        if len(batch) == batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


def main(argv=None) -> int:
    parser = console.command_parser("ferjax.predict", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--compilation_cache", default=compilation_cache.default_folder(),
                        help=compilation_cache.HELP)
    parser.add_argument("--jsonl", default=None,
                        help="also write one JSON line per image to this file")
    parser.add_argument("images", nargs="+", help="image files or folders of them")
    args = parser.parse_args(argv)
    compilation_cache.use(args.compilation_cache)
    paths = image_paths(args.images)
    if not paths:
        print(f"error: no image files in {args.images}", file=sys.stderr)
        return 1
    failed = 0
    out = open(args.jsonl, "w") if args.jsonl else None
    try:
        for r in predict_files(args.workdir, paths, args.checkpoint, args.batch_size):
            if out is not None:
                out.write(json.dumps(r) + "\n")
            if "error" in r:
                failed += 1
                print(f"error: {r['error']}", file=sys.stderr)
                continue
            probs = "  ".join(f"{n} {100 * p:5.1f}%" for n, p in r["probabilities"].items())
            print(f"{r['file']}: {r['prediction']}\n    {probs}")
    except (FileNotFoundError, ValueError) as e:
        console.print_error(e)
        return 1
    finally:
        if out is not None:
            out.close()
    if failed:
        print(f"{failed} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
