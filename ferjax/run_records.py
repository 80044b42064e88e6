"""What a training run writes into its workdir besides checkpoints, and reads back.

`config.json` (the resolved config), `evals.jsonl` (one record per evaluation: step,
headline metrics, and under 'tracked' those of config.eval.track_splits), TensorBoard
evaluation scalars and pictures, and `summary.json` at the end. On resume the history is
read back for early stopping and the last / best / mean-of-last-k summary, without the
records written after the checkpoint the run resumes from (`rewind`). Paths may be local
or gs:// (`ferjax.files`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from ferjax import files, metrics as metrics_lib

log = logging.getLogger("ferjax")


def write_config(config, workdir: str, class_names) -> None:
    """config.json (the resolved config) and classes.json (the class order)."""
    files.write_text(files.join(workdir, "config.json"),
                     config.to_json_best_effort(indent=2, sort_keys=True))
    files.write_text(files.join(workdir, "classes.json"), json.dumps(list(class_names)))


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """'field: old -> new' for each field whose value in `config` differs from `saved` (a
    workdir's config.json); fields only one side has are left out (older workdirs)."""
    new = json.loads(config.to_json_best_effort(sort_keys=True))

    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and key != "terms":
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    old, now = dict(flat(saved)), dict(flat(new))
    return [f"{k}: {old[k]!r} -> {now[k]!r}" for k in sorted(old.keys() & now.keys())
            if old[k] != now[k]]


def changes_since_saved(config, workdir: str) -> list[str]:
    """config_changes of `config` against the workdir's config.json ([] without one)."""
    saved_config = files.join(workdir, "config.json")
    if not files.exists(saved_config):
        return []
    return config_changes(json.loads(files.read_text(saved_config)), config)


def warn_about_config_changes(config, workdir: str, start_step: int) -> None:
    """Logs each field a resumed run's `config` changes against its config.json."""
    changes = changes_since_saved(config, workdir)
    if changes:
        log.warning("resuming %s at step %d with a config that differs from the one it "
                    "was trained with so far:\n  %s", workdir, start_step,
                    "\n  ".join(changes))


def load_eval_history(workdir: str) -> list[dict]:
    """The records of evals.jsonl, oldest first ([] before the first evaluation)."""
    return _read_jsonl(files.join(workdir, "evals.jsonl"))


def _read_jsonl(path: str) -> list[dict]:
    if not files.exists(path):
        return []
    return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


def rewind(workdir: str, step: int) -> list[dict]:
    """Drops the records after `step` from evals.jsonl and metrics.jsonl, for a run that
    resumes (or restarts, `step` 0) there: a run stopped between an evaluation and its
    next checkpoint left records the resumed run makes again. Returns the evaluation
    history up to `step`."""
    kept_history = []
    for name in ("evals.jsonl", "metrics.jsonl"):
        records = _read_jsonl(files.join(workdir, name))
        kept = [r for r in records if r["step"] <= step]
        if len(kept) < len(records):
            log.warning("%s: dropped %d records after step %d, written after the checkpoint "
                        "this run resumes from; they are made again", name,
                        len(records) - len(kept), step)
            files.write_text(files.join(workdir, name),
                             "".join(json.dumps(r) + "\n" for r in kept))
        if name == "evals.jsonl":
            kept_history = kept
    return kept_history


def append_evaluation(workdir: str, record: dict) -> None:
    """One evaluation record to evals.jsonl."""
    log_file = files.LineLog(files.join(workdir, "evals.jsonl"))
    log_file.append(json.dumps(record))
    log_file.close()


def write_evaluation(writer, step: int, summary: dict, cm: np.ndarray, class_names,
                      split: str, prefix: str) -> None:
    """One evaluation of `split` to the scalars and the picture of `writer`, under `prefix`
    ('eval' for config.data.eval_split, 'eval_<split>' for tracked splits)."""
    writer.write_scalars(step, {
        **{f"{prefix}/{name}": summary[name] for name in metrics_lib.HEADLINE},
        **{f"{prefix}/class_accuracy/{n}": a
           for n, a in zip(class_names, summary["per_class_accuracy"]) if not np.isnan(a)}})
    writer.write_image(step, f"{prefix}/confusion_matrix", np.asarray(
        metrics_lib.confusion_picture(cm, class_names, f"step {step}, {split}")))


def early_stop_due(history: list[dict], patience: int) -> bool:
    """Whether config.train.early_stop_patience (0 = off) evaluations have passed without
    a new best."""
    return bool(patience) and evaluations_since_best(history) >= patience


def evaluations_since_best(history: list[dict], metric: str = "mean_class_accuracy") -> int:
    """How many evaluations of `history` (oldest first) came after the first one with the
    highest `metric`: the early-stopping count (0 for an empty history)."""
    values = [h[metric] for h in history if metric in h]
    if not values:
        return 0
    return len(values) - 1 - int(np.nanargmax(values))


def tracked_summary(history: list[dict], best_step: int | None) -> dict:
    """{split: {'last' | 'at_best': {'step', *HEADLINE}}} of the tracked splits in `history`
    (evals.jsonl records, oldest first): their scores at the last evaluation and at the
    evaluation of the best checkpoint (`best_step`), i.e. what selecting on
    config.data.eval_split would report for them."""
    out: dict[str, dict] = {}
    for which, record in (("last", history[-1] if history else None),
                          ("at_best", next((h for h in history if h["step"] == best_step),
                                           None))):
        for split, scores in (record or {}).get("tracked", {}).items():
            out.setdefault(split, {})[which] = {"step": record["step"], **scores}
    return out


def final_summary(config, workdir, history, cm, class_names, step, total_steps, preempted,
                   nonfinite_steps, final_splits: dict | None = None,
                   early_stopped: bool = False, tracked: dict | None = None) -> dict:
    """summary.json and confusion_matrix.png of a finished (or stopped) run; returns the
    summary: last / best / mean-of-last-k of each headline metric over `history`, the
    last evaluation's per-class results and matrix `cm`, and the final / tracked splits."""
    k = config.train.mean_of_last_k
    result: dict[str, Any] = {"step": step, "total_steps": total_steps, "preempted": preempted,
                              "early_stopped": early_stopped,
                              "nonfinite_steps": len(nonfinite_steps), "workdir": workdir}
    for metric in metrics_lib.HEADLINE:
        # (evaluations logged before macro F1 was recorded lack it)
        result[metric] = metrics_lib.history_summary([h[metric] for h in history
                                                      if metric in h], k)
    if cm is not None:
        summary = metrics_lib.accuracy_summary(cm)
        table = metrics_lib.per_class_table(summary, class_names)
        result["per_class_accuracy"] = metrics_lib.by_class(class_names,
                                                            summary["per_class_accuracy"])
        result["confusion_matrix"] = cm.tolist()
        result["per_class_table"] = table
        if final_splits:
            result["final_splits"] = final_splits
            if jax.process_index() == 0:
                for split, by_model in final_splits.items():
                    for which, r in by_model.items():
                        metrics_lib.save_confusion_png(
                            np.asarray(r["confusion_matrix"]), class_names,
                            files.join(workdir, f"confusion_matrix_{split}_{which}.png"),
                            f"{config.data.name}/{split}, {which} model (step {r['step']})")
        if tracked:
            result["tracked_splits"] = tracked
        if jax.process_index() == 0:
            metrics_lib.save_confusion_png(cm, class_names,
                                           files.join(workdir, "confusion_matrix.png"),
                                           f"{config.data.name}/{config.data.eval_split}, "
                                           f"step {step}")
            files.write_text(files.join(workdir, "summary.json"), json.dumps(result, indent=2))
        log.info("final evaluation of %s at step %d:\n%s", config.data.eval_split, step, table)
        for split, by_which in (tracked or {}).items():
            log.info("tracked %s: %s", split, "; ".join(
                f"{which} (step {r['step']}) accuracy {100 * r['accuracy']:.2f} mean class "
                f"accuracy {100 * r['mean_class_accuracy']:.2f}" for which, r in by_which.items()))
    return result


def environment() -> dict:
    """What produced a run: package versions, devices, ferjax's git commit (with '+dirty'
    when the tree had uncommitted changes; None outside a git checkout) and the command."""
    import importlib.metadata
    import platform
    import subprocess
    import sys
    import time

    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
                    "tensorflow-datasets", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = None
    try:
        git = ["git", "-C", source]
        top, commit = subprocess.run(git + ["rev-parse", "--show-toplevel", "HEAD"],
                                     capture_output=True, text=True, timeout=10,
                                     check=True).stdout.split()
        if os.path.realpath(top) != os.path.realpath(source):
            commit = None  # an installed copy that happens to sit inside another checkout
        elif subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10).stdout.strip():
            commit += "+dirty"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    devices = jax.devices()
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": sys.argv, "ferjax_commit": commit, "python": platform.python_version(),
            "packages": versions, "host": platform.node(),
            "devices": f"{len(devices)} x {devices[0].device_kind}",
            "processes": jax.process_count()}


def log_start(workdir: str, start_step: int) -> None:
    """One line per start of a run in starts.jsonl: the step it (re)started from and its
    `environment()`, so every result can be traced to the code and versions behind it."""
    starts = files.LineLog(files.join(workdir, "starts.jsonl"))
    starts.append(json.dumps({"start_step": start_step, **environment()}))
    starts.close()
