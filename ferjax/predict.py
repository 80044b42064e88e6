"""Predict the expression of face crops with a trained workdir.

    python -m ferjax.predict --workdir runs/rafdb_mek face1.jpg face2.png

Prints, per image, the predicted class and every class probability. Inputs are face
crops (any size or image mode); they are resized to the model's input size.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def predict_files(workdir: str, paths: list[str], which: str = "best") -> list[dict]:
    import jax
    import jax.numpy as jnp

    from ferjax.data import augment
    from ferjax.data.images import open_rgb
    from ferjax.data.pipeline import resize
    from ferjax.train import make_recipe
    from ferjax.workdir import restore_model

    config, model, names, step = restore_model(workdir, which)
    ops = make_recipe(config).eval_ops
    images = np.stack([resize(np.asarray(open_rgb(p)), config.data.image_size) for p in paths])
    x = augment.augment_batch(jax.random.key(0), jnp.asarray(images), ops)
    probs = np.asarray(jax.nn.softmax(model(x)["logits"], axis=-1))
    return [{"file": p, "prediction": names[int(np.argmax(pr))],
             "probabilities": dict(zip(names, map(float, pr)))} for p, pr in zip(paths, probs)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    from ferjax.data.images import BadImageError
    try:
        results = predict_files(args.workdir, args.images, args.checkpoint)
    except (FileNotFoundError, ValueError, BadImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in results:
        probs = "  ".join(f"{n} {100 * p:5.1f}%" for n, p in r["probabilities"].items())
        print(f"{r['file']}: {r['prediction']}\n    {probs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
