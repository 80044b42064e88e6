"""The one training loop: input, steps, evaluation, checkpoints and logs of a run.

The loop is the same for every method. Methods differ only by configuration:
`config.loss.forward` and `config.loss.terms` pick registered parts (`ferjax.methods`),
`config.augment.ops` the on-device augmentations, `config.data.sampler` the sampler. The
jitted, data-parallel steps it runs are in `ferjax.steps`; what it runs for how long
comes from `ferjax.plan`.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ferjax import console, files, metrics as metrics_lib, profiling, run_records
from ferjax.checkpoint import Checkpointer, DamagedCheckpointError
from ferjax.data import pipeline, sources
from ferjax.losses import cumulative_alpha
from ferjax.models import count_params
from ferjax.optim import current_lr
from ferjax.plan import (Plan, Recipe, host_image_size, loss_weight_vectors, make_plan,
                         make_recipe, warn_if_flip_consistency_unattainable)
from ferjax.steps import (class_probabilities, make_eval_step, make_mesh,
                          make_model_and_optimizer, make_train_step, replicate,
                          replicated_model_and_optimizer, to_global)

# The setup moved to ferjax.plan and the steps to ferjax.steps; these names stay
# importable from here.
__all__ = ["NonFiniteLossError", "Plan", "Recipe", "class_probabilities", "evaluate",
           "host_image_size", "loss_weight_vectors", "make_eval_step", "make_mesh",
           "make_model_and_optimizer", "make_plan", "make_recipe",
           "make_train_step", "replicate", "replicated_model_and_optimizer", "to_global",
           "train_and_evaluate", "warn_if_flip_consistency_unattainable"]

log = logging.getLogger("ferjax")


class NonFiniteLossError(RuntimeError):
    """The loss or gradients became NaN/Inf and config.train.on_nonfinite asks to stop."""


# Without a progress bar (no terminal, or train.progress_bar=False) the loop logs a line
# with loss, rate and time left at most this often; so does a long evaluation.
PROGRESS_LINE_EVERY_S = 30.0


def evaluate(model, eval_step, eval_split: sources.Split, config, data_sharding,
             num_classes: int, name: str = "eval") -> np.ndarray:
    """One pass over the eval split; returns the (K, K) confusion matrix. A pass longer
    than PROGRESS_LINE_EVERY_S (a large split on a CPU) logs how far it is, as
    'evaluating `name`: batch 40/1100, about 3 min 10 s left'."""
    ds, num_batches = pipeline.eval_dataset(
        eval_split.source, global_batch_size=config.eval.batch_size,
        image_size=host_image_size(config.data), process_index=jax.process_index(),
        process_count=jax.process_count())
    graphdef, state = nnx.split(nnx.view(model, deterministic=True, use_running_average=True,
                                         raise_if_not_found=False))
    cm = np.zeros((num_classes, num_classes), np.int64)
    logged_at = time.time()
    for done, batch in enumerate(ds, 1):
        batch = to_global({k: batch[k] for k in ("image", "label", "mask")}, data_sharding)
        counts, _ = eval_step(graphdef, state, batch)
        cm += np.asarray(jax.device_get(counts), np.int64)
        now = time.time()
        if done == 1:  # the pace is timed from here, without the first batch's compilation
            first_done = now
        elif (done < num_batches and now - logged_at >= PROGRESS_LINE_EVERY_S
                and jax.process_index() == 0):
            logged_at = now
            left = (num_batches - done) * (now - first_done) / (done - 1)
            log.info("evaluating %s: batch %d/%d, about %s left", name, done, num_batches,
                     _duration(left))
    return cm


# ----------------------------------------------------------------------------- loop

class _Preemption:
    """Turns SIGTERM (Cloud TPU preemption, `kill`) and a first Ctrl-C (SIGINT) into a flag
    the loop checks, so the run saves a checkpoint after the current step and stops; a
    second Ctrl-C stops at once without saving.

    With several processes the signal reaches them at different steps, and a process that
    stopped alone would leave the others waiting in the next collective. So processes
    compare their flags every `sync_every` steps (one tiny all-gather) and all stop at the
    same step when any of them was signalled.
    """

    def __init__(self, sync_every: int = 1):
        self.requested = False   # this process got SIGTERM
        self.stop = False        # every process agreed to stop at this step
        self.sync_every = max(1, sync_every)
        self.signal_name = ""
        self._previous = {}

    def check(self, step: int) -> bool:
        """Whether to save and stop after `step` (the same answer in every process)."""
        if jax.process_count() == 1:
            self.stop = self.requested
        elif step % self.sync_every == 0:
            from jax.experimental import multihost_utils
            flags = multihost_utils.process_allgather(np.asarray(self.requested))
            self.stop = bool(np.any(flags))
        return self.stop

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step and stopping%s",
                    self.signal_name, " (Ctrl-C again stops at once, without saving)"
                    if signum == signal.SIGINT else "")
        self.requested = True

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _progress(total: int, initial: int, enabled: bool):
    """A tqdm bar on a terminal or in a notebook; None elsewhere (a log file or a cloud
    job's console, where each redraw would add to one endless line): log lines instead."""
    if not (enabled and console.interactive()):
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                desc="train", mininterval=1.0)


class _TrainLog:
    """The train metrics of the steps since the last flush. Each flush (a log window) writes
    their means with the step rate and the share of the window spent waiting for input,
    updates the progress bar or, without one, logs a progress line at most every
    PROGRESS_LINE_EVERY_S, and stops the run on a non-finite step as the config says."""

    def __init__(self, config, writer, total_steps: int, steps_per_epoch: int,
                 start_step: int, is_writer: bool):
        self.config, self.writer = config, writer
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.bar = _progress(total_steps, start_step, is_writer and config.train.progress_bar)
        self.log_lines = is_writer and self.bar is None
        self.pending: list[dict] = []  # the window's metrics, still on the device
        self.nonfinite_steps: list[int] = []
        # Seconds the loop waited for batches this window. The device can only starve for
        # input while the host waits there, so its share of the window bounds that idle time.
        self.input_wait = 0.0
        self.window_start = self.line_logged_at = time.time()
        self.pace_from = None  # (time, step) the time left is paced from

    def add(self, metrics: dict) -> None:
        self.pending.append(metrics)
        if self.bar is not None:
            self.bar.update(1)

    def restart_window(self) -> None:
        """Leaves the time since the last flush (evaluation, saving) out of the next rate."""
        self.window_start = time.time()

    def message(self, text: str) -> None:
        """A line above the bar, on stderr with the bar and the log; the log without one."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def flush(self, at_step: int) -> None:
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        now = time.time()
        window = max(now - self.window_start, 1e-9)
        self.nonfinite_steps += [at_step - len(fetched) + i + 1
                                 for i, m in enumerate(fetched) if not bool(m["finite"])]
        means = {k: float(np.mean([m[k] for m in fetched if bool(m["finite"])] or [np.nan]))
                 for k in fetched[0] if k != "finite"}
        rate = len(fetched) / window
        means.update(lr=current_lr(self.config.optim, at_step, self.steps_per_epoch,
                                   self.total_steps),
                     steps_per_second=rate,
                     images_per_second=rate * self.config.train.batch_size,
                     input_wait_fraction=min(self.input_wait / window, 1.0))
        self.writer.write_scalars(at_step, {f"train/{k}": v for k, v in means.items()})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{means['loss']:.3f}",
                                 acc=f"{means['train_accuracy']:.3f}",
                                 input_wait=f"{100 * means['input_wait_fraction']:.0f}%")
        elif self.log_lines:
            self._log_progress(at_step, means, now)
        self.pending, self.window_start, self.input_wait = [], time.time(), 0.0
        self._check_nonfinite()

    def _log_progress(self, at_step: int, means: dict, now: float) -> None:
        if self.pace_from is None:  # the first window holds the compilation: no line
            self.pace_from = (now, at_step)
        elif now - self.line_logged_at >= PROGRESS_LINE_EVERY_S:
            self.line_logged_at = now
            # Time left at the wall-clock pace since the first window, evaluations and
            # checkpoints included; the rate shown is the window's, training alone.
            started, from_step = self.pace_from
            left = (self.total_steps - at_step) * (now - started) / max(at_step - from_step, 1)
            log.info(_progress_line(at_step, self.total_steps, self.steps_per_epoch, means,
                                    left))

    def _check_nonfinite(self) -> None:
        if not self.nonfinite_steps:
            return
        first, train_cfg = self.nonfinite_steps[0], self.config.train
        if train_cfg.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"loss or gradients became NaN/Inf at step {first}; the update was "
                f"discarded and no checkpoint was written after it. Lower the learning "
                f"rate or set config.train.on_nonfinite='skip'.")
        log.warning("skipped %d non-finite steps so far (first at step %d)",
                    len(self.nonfinite_steps), first)
        if len(self.nonfinite_steps) > train_cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{len(self.nonfinite_steps)} steps had NaN/Inf loss (first at step {first}), "
                f"more than config.train.max_nonfinite_steps={train_cfg.max_nonfinite_steps}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates.

    Returns a summary: final and best metrics, per-class accuracy, where files went.
    """
    plan = make_plan(config)
    files.makedirs(workdir)
    train_split, eval_split = plan.train_split, plan.eval_split
    total_steps, total_epochs = plan.total_steps, plan.total_epochs
    steps_per_epoch, eval_every, ckpt_every = plan.steps_per_epoch, plan.eval_every, \
        plan.ckpt_every
    num_classes = train_split.num_classes
    is_writer = jax.process_index() == 0
    mesh = make_mesh()
    data_sharding = NamedSharding(mesh, P("data"))

    model, optimizer = replicated_model_and_optimizer(config, mesh, num_classes,
                                                      steps_per_epoch, total_steps)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    start_step = _resume(ckpt, model, optimizer, config, workdir)
    history, writer = _open_records(config, workdir, start_step, train_split.class_names,
                                    is_writer)
    patience = config.train.early_stop_patience
    early_stopped = _nothing_left_to_train(workdir, history, start_step, total_steps,
                                           patience)
    log.info("%s: %d train / %d eval examples, %d classes; model %s (%s parameters); "
             "%d device%s; %d steps (%d per epoch)%s", config.data.name, len(train_split),
             len(eval_split), num_classes, config.model.name, f"{count_params(model):,}",
             jax.device_count(), "" if jax.device_count() == 1 else "s", total_steps,
             steps_per_epoch,
             f"; resumed at step {start_step}" if start_step else "")

    train_step, state, write_back = make_train_step(plan.recipe, model, optimizer)
    eval_step = make_eval_step(plan.recipe, num_classes)
    base_key = jax.random.key(config.seed)
    class_weights = jnp.asarray(plan.class_weights)
    rebalance_weights = jnp.asarray(plan.rebalance_weights)
    train_log = _TrainLog(config, writer, total_steps, steps_per_epoch, start_step, is_writer)
    run_eval = _Evaluations(config, workdir, plan, model, optimizer, eval_step, data_sharding,
                            ckpt, writer, history, train_log)
    step = start_step

    train_iter = iter(plan.train_data.dataset_from(start_step))  # batch s feeds step s
    # The process's first step compiles; the trace starts after it.
    trace = profiling.StepTrace(workdir, start_step + 1, config.train.profile_steps)
    with _Preemption(sync_every=config.train.log_every_steps) as preemption, \
            jax.set_mesh(mesh):
        try:
            while step < total_steps and not early_stopped:
                epoch = min(step // steps_per_epoch + 1, total_epochs)
                alpha = cumulative_alpha(epoch, total_epochs, config.loss.bbn_alpha_rule)
                waited_from = time.time()
                batch = to_global(next(train_iter), data_sharding)
                train_log.input_wait += time.time() - waited_from
                trace.before_step(step, state)
                state, metrics = train_step(state, batch, jnp.int32(step), base_key,
                                            jnp.float32(alpha), class_weights,
                                            rebalance_weights)
                train_log.add(metrics)
                step += 1
                trace.after_step(step, state)
                stop = preemption.check(step)
                boundary = step % eval_every == 0 or step % ckpt_every == 0 \
                    or step == total_steps or stop
                if step % config.train.log_every_steps == 0 or boundary:
                    train_log.flush(step)
                if boundary:  # evaluation and checkpoints read the objects
                    write_back(state)
                if step % eval_every == 0 or step == total_steps:
                    run_eval(step)
                    early_stopped = run_records.early_stop_due(history, patience)
                if step % ckpt_every == 0 or step == total_steps or stop or early_stopped:
                    writer.flush()  # the metrics up to a checkpoint are stored before it
                    ckpt.save(step, model, optimizer)
                if boundary:  # the next window's rate leaves out evaluation and saving
                    train_log.restart_window()
                if stop:
                    log.warning("stopped at step %d after %s; rerun the same command to "
                                "resume", step, preemption.signal_name)
                    break
                if early_stopped:
                    log.info("early stop at step %d: no new best mean class accuracy in %d "
                             "evaluations", step, patience)
            finals = {}
            last_cm = run_eval.last_cm
            if plan.final_splits and (step >= total_steps or early_stopped) \
                    and last_cm is not None:
                finals = _evaluate_final_splits(config, plan.builder, plan.final_splits, model,
                                                ckpt, eval_step, data_sharding,
                                                eval_split.class_names, step, writer)
            result = run_records.final_summary(
                config, workdir, history, last_cm, eval_split.class_names, step, total_steps,
                preemption.stop, train_log.nonfinite_steps, finals, early_stopped,
                run_records.tracked_summary(history, ckpt.best_step()))
            writer.write_text(step, "eval/per_class", result.get("per_class_table", ""))
        finally:
            trace.close(step=step)
            train_log.close()
            writer.close()
            _close(ckpt, train_iter)
    return result


def _resume(ckpt: Checkpointer, model, optimizer, config, workdir: str) -> int:
    """Restores the latest checkpoint into `model` and `optimizer`; returns its step (0
    when there is none). A checkpoint that does not fit is reported with the config fields
    that changed since the workdir was trained; `ckpt` is closed on any error."""
    try:
        return ckpt.resume(model, optimizer) or 0
    except ValueError as e:
        ckpt.close()
        changes = run_records.changes_since_saved(config, workdir)
        if changes and not isinstance(e, DamagedCheckpointError):
            raise ValueError(f"{e}\nThe config differs from the workdir's config.json in: "
                             f"{'; '.join(changes)}") from e
        raise
    except BaseException:
        ckpt.close()
        raise


def _open_records(config, workdir: str, start_step: int, class_names,
                  is_writer: bool) -> tuple[list[dict], metrics_lib.MetricWriter]:
    """The run's evaluation history up to `start_step` and its metric writer. Process 0
    also writes config.json, notes the start in the run log, and drops the records of
    steps after `start_step` (a run resumed from an earlier checkpoint redoes them)."""
    if start_step:
        run_records.warn_about_config_changes(config, workdir, start_step)
    if not is_writer:
        history = [r for r in run_records.load_eval_history(workdir)
                   if r["step"] <= start_step]
        return history, metrics_lib.NullWriter()
    run_records.write_config(config, workdir, class_names)
    run_records.log_start(workdir, start_step)
    history = run_records.rewind(workdir, start_step)
    writer = metrics_lib.MetricWriter(workdir, config.train.tensorboard,
                                      purge_after=start_step)
    return history, writer


def _nothing_left_to_train(workdir: str, history: list[dict], start_step: int,
                           total_steps: int, patience: int) -> bool:
    """Warns when a resumed run has nothing left to do; True when it had stopped early."""
    if run_records.early_stop_due(history, patience):
        log.warning("%s stopped early at step %d (no new best mean class accuracy in %d "
                    "evaluations); nothing left to train (raise train.early_stop_patience "
                    "to go on)", workdir, start_step, patience)
        return True
    if start_step >= total_steps:
        log.warning("the checkpoint in %s is at step %d, at or past this config's %d steps: "
                    "nothing left to train (raise train.epochs / train.num_steps to go on)",
                    workdir, start_step, total_steps)
    return False


class _Evaluations:
    """One evaluation of a run, called with its step: the eval split and then each tracked
    split. Each split's summaries and confusion-matrix picture go to TensorBoard; one line
    is logged; the record is appended to the history (and evals.jsonl) and the
    checkpoint is kept when it is the best so far. `last_cm` is the eval split's latest
    confusion matrix."""

    def __init__(self, config, workdir: str, plan: Plan, model, optimizer, eval_step,
                 data_sharding, ckpt: Checkpointer, writer, history: list[dict],
                 train_log: _TrainLog):
        self.config, self.workdir = config, workdir
        self.model, self.optimizer, self.eval_step = model, optimizer, eval_step
        self.plan = plan
        self.data_sharding, self.ckpt, self.writer = data_sharding, ckpt, writer
        self.history, self.train_log = history, train_log
        self.is_writer = jax.process_index() == 0
        self.last_cm: np.ndarray | None = None

    def _split(self, at_step: int, data: sources.Split, name: str, tag: str):
        cm = evaluate(self.model, self.eval_step, data, self.config, self.data_sharding,
                      self.plan.eval_split.num_classes, name)
        summary = metrics_lib.accuracy_summary(cm)
        if self.is_writer:
            run_records.write_evaluation(self.writer, at_step, summary, cm,
                                         self.plan.eval_split.class_names, name, tag)
        return cm, summary

    def __call__(self, at_step: int) -> None:
        self.last_cm, summary = self._split(at_step, self.plan.eval_split,
                                            self.config.data.eval_split, "eval")
        record = {"step": at_step, **metrics_lib.headline(summary)}
        message = (f"eval step {at_step} (epoch {at_step / self.plan.steps_per_epoch:.2f}): "
                   f"accuracy {100 * summary['accuracy']:.2f} %  mean class accuracy "
                   f"{100 * summary['mean_class_accuracy']:.2f} %")
        for split, data in self.plan.tracked.items():
            _, tracked = self._split(at_step, data, split, f"eval_{split}")
            record.setdefault("tracked", {})[split] = metrics_lib.headline(tracked)
            message += (f" | {split}: accuracy {100 * tracked['accuracy']:.2f} %  mean "
                        f"class {100 * tracked['mean_class_accuracy']:.2f} %")
        self.history.append(record)
        if self.is_writer:
            run_records.append_evaluation(self.workdir, record)
        self.train_log.message(message)
        self.ckpt.save_if_best(at_step, self.model, self.optimizer, record)


def _progress_line(step: int, total_steps: int, steps_per_epoch: int, means: dict,
                   seconds_left: float) -> str:
    """'step 620/992 (epoch 10.00): loss 0.7660  train accuracy 70.5 %  10.40 steps/s
    (666 images/s)  input wait 8 %  about 1 min 05 s left' from a log window's means."""
    return (f"step {step}/{total_steps} (epoch {step / steps_per_epoch:.2f}): loss "
            f"{means['loss']:.4f}  train accuracy {100 * means['train_accuracy']:.1f} %  "
            f"{means['steps_per_second']:.2f} steps/s ({means['images_per_second']:.0f} "
            f"images/s)  input wait {100 * means['input_wait_fraction']:.0f} %  about "
            f"{_duration(seconds_left)} left")


def _duration(seconds: float) -> str:
    """'5 h 12 min', '1 min 05 s' or '42 s'."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes:02d} min" if hours else
            f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s")


def _close(ckpt: Checkpointer, train_iter) -> None:
    """Releases checkpoint threads and grain worker processes (also on errors)."""
    ckpt.close()
    if hasattr(train_iter, "close"):
        train_iter.close()


def _evaluate_final_splits(config, builder, splits, model, ckpt: Checkpointer, eval_step,
                           data_sharding, class_names, step: int, writer) -> dict:
    """{split: {'last' | 'best': metrics}} of each of `splits` of `builder` with the
    trained model and then the best checkpoint (restored into `model`: training is over);
    the headline metrics also go to `writer` as final/<split>/<last|best>/<metric>."""
    opened = {split: sources.open_eval_split(builder, config.data, split) for split in splits}
    out: dict[str, dict] = {split: {} for split in splits}
    for which in ("last", "best"):
        at_step = step if which == "last" else ckpt.restore(model, which="best")
        if at_step is None:  # no evaluation has run, so there is no best checkpoint
            continue
        for split, data in opened.items():
            cm = evaluate(model, eval_step, data, config, data_sharding, len(class_names),
                          split)
            summary = metrics_lib.accuracy_summary(cm)
            out[split][which] = {
                "step": int(at_step), **metrics_lib.headline(summary),
                "per_class_accuracy": metrics_lib.by_class(class_names,
                                                           summary["per_class_accuracy"]),
                "confusion_matrix": cm.tolist()}
            log.info("%s with the %s model (step %d):\n%s", split, which, at_step,
                     metrics_lib.per_class_table(summary, class_names))
    writer.write_scalars(step, {f"final/{split}/{which}/{metric}": r[metric]
                                for split, by_checkpoint in out.items()
                                for which, r in by_checkpoint.items()
                                for metric in metrics_lib.HEADLINE})
    return out

