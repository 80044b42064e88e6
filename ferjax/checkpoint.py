"""Orbax checkpoints of model and optimizer state.

`workdir/checkpoints/<step>` keeps the last N; `workdir/best/<step>` keeps the one with the
best mean class accuracy. Orbax writes each checkpoint into a temporary folder and renames
it when complete, so a save interrupted by a crash or SIGKILL never replaces the latest
good checkpoint; restore always picks the newest *complete* step.

Saved: model parameters and BatchNorm statistics, and the optimizer state. The data
position needs no saving: every step reads one batch and batch b is a pure function of
(config, b) (ferjax/data/pipeline.py), so a run resumed at step s reads from batch s, with
any number of grain workers. Dropout and augmentation randomness is re-derived from
(seed, step).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings

import jax
import orbax.checkpoint as ocp
from flax import nnx

from ferjax import files

log = logging.getLogger("ferjax")

MODEL_STATE = (nnx.Param, nnx.BatchStat)


def model_state(model: nnx.Module):
    return nnx.state(model, MODEL_STATE)


class Checkpointer:
    """Latest-N and best-by-metric checkpoint managers under one workdir."""

    def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = "mean_class_accuracy"):
        self.workdir = files.absolute(workdir)
        options = dict(enable_async_checkpointing=False, cleanup_tmp_directories=True)
        self.latest = ocp.CheckpointManager(
            files.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options))
        self.best_metric = best_metric
        self.best = ocp.CheckpointManager(
            files.join(self.workdir, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode="max",
                keep_checkpoints_without_metrics=False, **options))

    @staticmethod
    def _save_args(model, optimizer):
        return ocp.args.Composite(model=ocp.args.StandardSave(model_state(model)),
                                  optimizer=ocp.args.StandardSave(nnx.state(optimizer)))

    def save(self, step: int, model, optimizer) -> None:
        """Saves to the latest-N set (blocking, atomic)."""
        self.latest.save(step, args=self._save_args(model, optimizer), force=True)
        self.latest.wait_until_finished()

    def save_if_best(self, step: int, model, optimizer, metrics: dict) -> bool:
        """Saves to the best set when `metrics[best_metric]` beats the kept one."""
        value = metrics[self.best_metric]
        best_step = self.best.best_step()
        if best_step is not None:
            kept = self.best.metrics(best_step) if hasattr(self.best, "metrics") else None
            if kept is not None and kept.get(self.best_metric, -1) >= value:
                return False
        if step in self.best.all_steps():
            # A run resumed from an earlier checkpoint is redoing this evaluation, and this
            # time it scored higher: the new model replaces the one of the abandoned stretch.
            self.best.delete(step)
        self.best.save(step, args=self._save_args(model, optimizer),
                       metrics={self.best_metric: float(value)}, force=True)
        self.best.wait_until_finished()
        return True

    def best_step(self) -> int | None:
        """The step of the kept best checkpoint, or None before the first evaluation."""
        return self.best.best_step()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, model, optimizer=None, *, step: int | None = None,
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
        where = f"{manager.directory}/{step}"
        expected = {"model": model_state(model)}
        if optimizer is not None:
            expected["optimizer"] = nnx.state(optimizer)
        _silence_closed_loop_callbacks()  # before any read: a failed one leaves callbacks
        stored = _stored_shapes(manager, step, where) or {}
        _check_fits(expected, stored, where)
        args = {name: ocp.args.StandardRestore(tree) for name, tree in expected.items()}
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # orbax wraps a failed read in a bare Exception
            read_error = _storage_error(e)
            if read_error is not None:
                raise _damaged(where, read_error) from e
            if not isinstance(e, (ValueError, KeyError, TypeError)):
                raise
            raise ValueError(
                f"checkpoint {where} does not fit this model or "
                f"optimizer (was it written with another model or optimizer config?): "
                f"{type(e).__name__}: {e}") from e
        # Items without readable metadata are checked now, from what was restored.
        _check_fits(expected, {name: _leaf_shapes(restored[name]) for name in expected
                               if name not in stored}, where)
        nnx.update(model, restored["model"])
        if optimizer is not None:
            nnx.update(optimizer, restored["optimizer"])
        return step

    def resume(self, model, optimizer) -> int | None:
        """Restores the newest readable checkpoint of the latest set; returns its step, or
        None when there is none. Newer checkpoints whose files are damaged or missing are
        moved to <workdir>/set_aside/checkpoints/ with a warning, never deleted, so the run
        goes on from the one before and can save those steps again. Several processes
        cannot move folders safely, nor can cloud storage, so there the damage is an error
        saying what to move."""
        steps = sorted(self.latest.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                self.restore(model, optimizer, step=step)
            except DamagedCheckpointError as e:
                if jax.process_count() > 1 or files.is_url(self.workdir) or \
                        i + 1 == len(steps):
                    raise DamagedCheckpointError(
                        f"{e}. Move {self.latest.directory}/{step} out of the way to resume "
                        f"from the checkpoint before it"
                        + ("" if i + 1 < len(steps) else " (there is none: the run would "
                           "start over)")) from e
                moved = self._set_aside(step)
                log.warning("%s; moved it to %s and resuming from the checkpoint before it",
                            e, moved)
                continue
            return step
        return None

    def _set_aside(self, step: int) -> str:
        source = os.path.join(str(self.latest.directory), str(step))
        target = os.path.join(self.workdir, "set_aside", "checkpoints", str(step))
        n = 1
        while os.path.exists(target):
            target = os.path.join(self.workdir, "set_aside", "checkpoints", f"{step}.{n}")
            n += 1
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
        self.latest.reload()
        return target

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _silence_closed_loop_callbacks() -> None:
    """After a failed restore, TensorStore's threads go on delivering the reads it had
    started to the asyncio loop orbax has closed, and Python reports each one as an
    unraisable "Event loop is closed" RuntimeError: some eighty tracebacks that would bury
    the warning that matters. They are harmless; this drops just those, once installed."""
    previous = sys.unraisablehook
    if getattr(previous, "ferjax_closed_loop_filter", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.ferjax_closed_loop_filter = True
    sys.unraisablehook = hook
    # The reads orbax abandoned also end as asyncio tasks whose failure nobody collected,
    # and, when reading metadata, as coroutines it never awaited.
    logging.getLogger("asyncio").addFilter(_drop_abandoned_reads)
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message=r"coroutine 'Store\._get_array_metadatas' was never awaited")


def _drop_abandoned_reads(record: logging.LogRecord) -> bool:
    """asyncio's 'Task / Future exception was never retrieved' for a read of a damaged
    checkpoint (logged when the abandoned read is collected, at the latest at exit)."""
    error = record.exc_info[1] if record.exc_info else None
    if error is None and isinstance(record.args, dict):  # asyncio passes the context
        error = record.args.get("exception")
    return not (record.getMessage().startswith(("Task exception was never retrieved",
                                                "Future exception was never retrieved"))
                and error is not None and _storage_error(error) is not None)


class DamagedCheckpointError(ValueError):
    """A checkpoint's files cannot be read (damaged, truncated or deleted)."""


def _storage_error(error: BaseException) -> BaseException | None:
    """The exception in `error`'s chain that says a read of a checkpoint's files failed
    (TensorStore's NOT_FOUND / DATA_LOSS / FAILED_PRECONDITION read errors, which orbax may
    wrap in a bare Exception), or None when the tree does not fit the model instead."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if text.startswith(("NOT_FOUND", "DATA_LOSS")) or "Error reading" in text:
            return error
        error = error.__cause__ or error.__context__
    return None


def _leaf_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...] | None]:
    """{path: shape} of a state tree, a restored tree or orbax's metadata of one; paths as
    plain strings without the Variable's trailing 'value', so that all three agree."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                      for k in path)
        if names and names[-1] == "value":
            names = names[:-1]
        shapes[names] = tuple(leaf.shape) if hasattr(leaf, "shape") else None
    return shapes


def _stored_shapes(manager, step: int, where: str) -> dict[str, dict] | None:
    """{item: leaf shapes} from the metadata of the checkpoint's model and optimizer items
    (no array data is read), or None when orbax cannot read it; the restore then says why.

    Raises:
      DamagedCheckpointError: when the metadata's files are damaged or missing.
    """
    shapes = {}
    try:
        for name in ("model", "optimizer"):
            item = manager.directory / str(step) / name
            if item.exists():
                metadata = ocp.StandardCheckpointHandler().metadata(item)
                shapes[name] = _leaf_shapes(getattr(metadata, "tree", metadata))
        return shapes
    except Exception as e:
        read_error = _storage_error(e)
        damaged = None if read_error is None else _damaged(where, read_error)
        del read_error  # it holds the frames that hold the reads orbax abandoned
    # Out of the except block, so that nothing holds those reads: collect them now, while
    # the filter for their warning is in place (_silence_closed_loop_callbacks).
    gc.collect()
    if damaged is not None:
        raise damaged
    return None


def _damaged(where: str, read_error: BaseException) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"checkpoint {where} cannot be read: its files are damaged "
                                  f"or missing ({str(read_error).splitlines()[0][:300]})")


def _check_fits(expected: dict, stored: dict[str, dict], where: str) -> None:
    """Raises a ValueError naming the first parameters whose shape differs between the
    model/optimizer (`expected`, {item: state}) and a checkpoint (`stored`), or that only
    one of them has. Checked before reading so that the error names the parameter."""
    for name, tree in expected.items():
        have = stored.get(name)
        if have is None:  # no metadata: the restore itself says what is wrong
            continue
        want = _leaf_shapes(tree)
        differ = [_difference(path, have, want) for path in sorted(want.keys() | have.keys())
                  if have.get(path, "absent") != want.get(path, "absent")]
        if differ:
            more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
            raise ValueError(f"checkpoint {where} does not fit this {name} (was it written "
                             f"with another {name} config?): {'; '.join(differ[:3])}{more}")


def _difference(path: tuple[str, ...], stored: dict, expected: dict) -> str:
    name = "/".join(path)
    if path not in expected:
        return f"{name} is only in the checkpoint"
    if path not in stored:
        return f"{name} is not in the checkpoint"
    return f"{name} has shape {stored[path]} in the checkpoint, {expected[path]} here"
