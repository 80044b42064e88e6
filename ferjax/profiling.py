"""A `jax.profiler` trace of a few training steps (config.train.profile_steps).

The trace goes to `<workdir>/profile/`: TensorBoard shows it in its Profile tab (with its
profile plugin installed; `tensorboard --logdir <workdir>`), and
`perfetto_trace.json.gz` opens in https://ui.perfetto.dev. It starts after the first step
of the process, which compiles, and every process of a multi-host job writes its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import jax

from ferjax import files

log = logging.getLogger("ferjax")


class StepTrace:
    """Traces the step calls of loop index first .. first + count - 1:

        trace = StepTrace(workdir, first_step=start_step + 1, count=5)
        trace.before_step(step, state)   # before the step call of step `step`
        trace.after_step(step, state)    # after it, `step` now the number of steps done
        trace.close(step)                # at the end (stops a trace the loop cut short)

    The state is waited for at both ends, so the trace holds exactly those steps, not the
    tail of the compilation or of queued work. `count` 0 traces nothing.
    """

    def __init__(self, workdir: str, first_step: int, count: int):
        self.workdir, self.first, self.count = workdir, first_step, count
        self.local_dir, self.traced = "", False

    def before_step(self, step: int, state) -> None:
        if self.count > 0 and step == self.first and not self.local_dir:
            jax.block_until_ready(state)
            # Traced into a local folder: cloud workdirs get a copy when it is complete.
            self.local_dir = (tempfile.mkdtemp(prefix="ferjax-profile-")
                              if files.is_url(self.workdir) else
                              files.join(self.workdir, "profile"))
            jax.profiler.start_trace(self.local_dir, create_perfetto_trace=True)

    def after_step(self, step: int, state) -> None:
        if self.local_dir and step == self.first + self.count:
            self._stop(step, state)

    def close(self, step: int) -> None:
        """Ends the trace if it runs; `step`: the number of steps done. A loop cut short
        (preemption, an error) is not waited for: its queued work may be traced in part."""
        if self.local_dir:
            self._stop(step)
        elif self.count > 0 and not self.traced:
            log.warning("config.train.profile_steps=%d: nothing was traced, as this run had "
                        "no step after its first (which compiles)", self.count)

    def _stop(self, step: int, state=None) -> None:
        if state is not None:
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        where = files.join(self.workdir, "profile")
        if files.is_url(self.workdir):
            for root, _, names in os.walk(self.local_dir):
                for name in names:
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, self.local_dir).replace(os.sep, "/")
                    with open(path, "rb") as f:
                        files.write_bytes(files.join(where, rel), f.read())
            shutil.rmtree(self.local_dir, ignore_errors=True)
        # Counted from 1, as the log's "step 6/8" (the loop's index `first` is step first + 1).
        log.info("profile of steps %d-%d in %s (TensorBoard's Profile tab; "
                 "perfetto_trace.json.gz for ui.perfetto.dev)", self.first + 1, step, where)
        self.local_dir, self.traced = "", True
