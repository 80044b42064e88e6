"""Reading a training workdir back: its config, class names and a restored model."""

from __future__ import annotations

import json

import ml_collections
from flax import nnx

from ferjax import files
from ferjax.checkpoint import Checkpointer
from ferjax.models import build_model
from ferjax.presets import base_config


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = files.join(workdir, "config.json")
    if not files.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a ferjax training workdir?")
    saved = json.loads(files.read_text(path))
    # A workdir written before a config field existed gets that field's default.
    return ml_collections.ConfigDict(_with_defaults(saved, base_config().to_dict()))


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """`saved` plus the keys only `defaults` has, recursively; saved values always win (so
    a saved `loss.terms` is kept whole, not merged with the default terms)."""
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict) and key != "terms":
            out[key] = _with_defaults(out[key], value)
    return out


def class_names(workdir: str) -> list[str]:
    path = files.join(workdir, "classes.json")
    if not files.exists(path):
        raise FileNotFoundError(f"{path} not found: the workdir has no record of its classes "
                                "(written when training starts)")
    return json.loads(files.read_text(path))


def restore_model(workdir: str, which: str = "best"):
    """(config, eval-mode model, class names, step) from `which` in 'best', 'latest' or a
    step number; 'best' falls back to 'latest' when no evaluation has run yet."""
    config = load_config(workdir)
    names = class_names(workdir)
    model = build_model(config.model, num_classes=len(names), image_size=config.data.image_size,
                        rngs=nnx.Rngs(0))
    ckpt = Checkpointer(workdir)
    try:
        if which.isdigit():
            step = ckpt.restore(model, step=int(which))
        else:
            step = ckpt.restore(model, which=which)
            if step is None and which == "best":
                step = ckpt.restore(model, which="latest")
    finally:
        ckpt.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir} ({which!r})")
    model.eval()
    return config, model, names, step
