"""Orbax checkpoints of model, optimizer and data-iterator state.

`workdir/checkpoints/<step>` keeps the last N; `workdir/best/<step>` keeps the one with the
best mean class accuracy. Orbax writes each checkpoint into a temporary folder and renames
it when complete, so a save interrupted by a crash or SIGKILL never replaces the latest
good checkpoint; restore always picks the newest *complete* step.

Saved: model parameters and BatchNorm statistics, the optimizer state, and the grain
iterator position. Dropout randomness is re-derived from (seed, step) every step, so it
needs no saving.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

log = logging.getLogger("ferjax")

MODEL_STATE = (nnx.Param, nnx.BatchStat)


def model_state(model: nnx.Module):
    return nnx.state(model, MODEL_STATE)


class Checkpointer:
    """Latest-N and best-by-metric checkpoint managers under one workdir."""

    def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = "mean_class_accuracy"):
        self.workdir = os.path.abspath(workdir)
        options = dict(enable_async_checkpointing=False, cleanup_tmp_directories=True)
        self.latest = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options))
        self.best_metric = best_metric
        self.best = ocp.CheckpointManager(
            os.path.join(self.workdir, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode="max",
                keep_checkpoints_without_metrics=False, **options))

    @staticmethod
    def _save_args(model, optimizer, data_iterator=None):
        items = {"model": ocp.args.StandardSave(model_state(model)),
                 "optimizer": ocp.args.StandardSave(nnx.state(optimizer))}
        if data_iterator is not None:
            import grain
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return ocp.args.Composite(**items)

    def save(self, step: int, model, optimizer, data_iterator=None) -> None:
        """Saves to the latest-N set (blocking, atomic)."""
        self.latest.save(step, args=self._save_args(model, optimizer, data_iterator), force=True)
        self.latest.wait_until_finished()

    def save_if_best(self, step: int, model, optimizer, metrics: dict) -> bool:
        """Saves to the best set when `metrics[best_metric]` beats the kept one."""
        value = metrics[self.best_metric]
        best_step = self.best.best_step()
        if best_step is not None:
            kept = self.best.metrics(best_step) if hasattr(self.best, "metrics") else None
            if kept is not None and kept.get(self.best_metric, -1) >= value:
                return False
        self.best.save(step, args=self._save_args(model, optimizer),
                       metrics={self.best_metric: float(value)}, force=True)
        self.best.wait_until_finished()
        return True

    def best_step(self) -> int | None:
        """The step of the kept best checkpoint, or None before the first evaluation."""
        return self.best.best_step()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, model, optimizer=None, data_iterator=None, *, step: int | None = None,
                which: str = "latest") -> int | None:
        """Restores in place; returns the step restored, or None if there is nothing to restore.

        Raises:
          ValueError: naming the mismatching tree when the checkpoint was written by a
            different model (another architecture, width or number of classes).
        """
        manager = self.latest if which == "latest" else self.best
        if step is None:
            step = manager.latest_step() if which == "latest" else manager.best_step()
        if step is None:
            return None
        items = {"model": ocp.args.StandardRestore(model_state(model))}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardRestore(nnx.state(optimizer))
        if data_iterator is not None:
            import grain
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"checkpoint {manager.directory}/{step} does not fit this model/optimizer "
                f"(was it written with another model config?): {e}") from e
        _check_shapes(model_state(model), restored["model"], f"{manager.directory}/{step}")
        nnx.update(model, restored["model"])
        if optimizer is not None:
            nnx.update(optimizer, restored["optimizer"])
        return step

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _check_shapes(expected, restored, where: str) -> None:
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
    for path, leaf in want:
        other = got.get(path)
        if other is None or other.shape != leaf.shape:
            name = jax.tree_util.keystr(path)
            raise ValueError(f"checkpoint {where} does not fit this model: {name} has shape "
                             f"{None if other is None else other.shape}, model expects "
                             f"{leaf.shape}")
