"""The README's "Your own JAX code" section runs as written: a hand-written step with
ferjax's losses, and a loss term registered from a config file and trained by the loop."""

import json
import math
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

from ferjax import train
from ferjax.presets import load_config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]


def section_code() -> list[str]:
    """The ```python blocks of the README section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Your own JAX code\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_a_step_a_term_and_a_config():
    blocks = section_code()
    assert len(blocks) == 3
    assert blocks[1].startswith("# my_terms.py\n") and blocks[2].startswith("# my_config.py\n")


def test_own_train_step_runs_and_learns(capsys):
    namespace: dict = {}
    exec(compile(section_code()[0], "README.md", "exec"), namespace)
    first = float(capsys.readouterr().out)
    assert math.isfinite(first)
    step, args = namespace["train_step"], [namespace[k] for k in
                                           ("model", "optimizer", "images", "labels")]
    losses = [float(step(*args)) for _ in range(4)]  # the same batch again: it is learnt
    assert losses[-1] < first


def test_registered_term_from_a_config_file_trains(tmp_path, monkeypatch):
    _, terms_code, config_code = section_code()
    (tmp_path / "my_terms.py").write_text(terms_code)
    (tmp_path / "my_config.py").write_text(config_code)
    monkeypatch.syspath_prepend(str(tmp_path))  # as when run next to the two files
    config = load_config_file(tmp_path / "my_config.py")
    from ferjax.methods import TERMS
    focal = TERMS.get("focal")
    # p(true) = 3 / (1 + 3) = 0.75: −(1 − 0.75)² · ln 0.75
    value = focal({"logits": jnp.array([[0.0, math.log(3.0)]])},
                  {"label": jnp.array([1])}, None)
    assert float(value) == pytest.approx(-(0.25 ** 2) * math.log(0.75), rel=1e-5)
    # Trained by the loop on the tiny synthetic set: the term is logged by name.
    smoke = load_config_file(ROOT / "configs" / "synthetic.py", "mek,smoke")
    for group in ("data", "train", "eval"):
        config[group] = smoke[group]
    config.model.width = smoke.model.width
    config.data.data_dir = str(tmp_path / "data")
    train.train_and_evaluate(config, str(tmp_path / "run"))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    focal_values = [m["train/loss/focal"] for m in logged if "train/loss/focal" in m]
    assert focal_values and all(np.isfinite(focal_values))
