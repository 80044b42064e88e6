"""Summarize several runs: cross-validation folds, seeds, or any workdirs of one task.

    python -m ferjax.summarize runs/ck/fold*
    python -m ferjax.summarize runs/rafdb_mek_seed* --json seeds.json --picture pooled.png

Prints each run's overall accuracy, mean class accuracy and macro F1 (last evaluation,
best evaluation, mean of the last k = train.mean_of_last_k) from its summary.json, their
mean and sample standard deviation over the runs, and the metrics of the pooled confusion
matrix: the sum of the runs' last-evaluation matrices, which for folds with disjoint test
sets is the cross-validated result over every test image once.

With `--split test`, the runs' `final_splits` (config.eval.final_splits) are summarized
instead: that split scored with the last model and with the best checkpoint (kinds 'last'
and 'best'), e.g. seeds that each selected `best/` on a held-out part and reported test;
`--pool best` then pools the best checkpoints' matrices instead of the last models'.

Runs whose last start (starts.jsonl) used another ferjax commit or jax version are
named in a note, since their differences may then come from the code.

A run that stopped before its last step (preempted, or still going; early stopping by
train.early_stop_patience counts as finished) is listed but left out of the mean unless
--include_unfinished; a workdir without summary.json is reported and skipped. The
exit status is 1 when any run was skipped or left out.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Sequence

import numpy as np

from ferjax import console, files, metrics

METRICS = metrics.HEADLINE
KINDS = ("last", "best", "mean_last")   # 'mean_last': of the last k evaluations
SHORT = {"accuracy": "acc", "mean_class_accuracy": "mca", "macro_f1": "F1",
         "last": "last", "best": "best", "mean_last": "meanK"}


class RunError(ValueError):
    """A workdir that cannot be summarized, with the reason."""


def load_run(workdir: str, split: str | None = None, pool: str = "last") -> dict:
    """The summary.json of `workdir`, with its class names ('class_names') and whether it
    ran to its last step ('finished'). With `split`, the metrics are those of its
    final_splits[split] and the confusion matrix that of the `pool` ('last' or 'best')
    model; without, the evaluation split's, and `pool` must be 'last' (summary.json keeps
    only the last evaluation's matrix). Raises RunError naming the file otherwise."""
    path = files.join(workdir, "summary.json")
    if not files.exists(path):
        why = "not a folder" if not files.is_dir(workdir) else \
            "no summary.json: the run has not finished (it is written after the last step)"
        raise RunError(f"{workdir}: {why}")
    try:
        run = json.loads(files.read_text(path))
        names = list(run["per_class_accuracy"])
        if split is None:
            cm = np.asarray(run["confusion_matrix"], np.int64)
            values = {m: _kinds(run[m]) for m in METRICS if m in run}
        else:
            finals = run.get("final_splits", {})
            if split not in finals:
                raise RunError(f"{path}: no final_splits[{split!r}] (it has "
                               f"{sorted(finals) or 'none'}; config.eval.final_splits)")
            by_model = finals[split]
            if pool not in by_model:
                raise RunError(f"{path}: final_splits[{split!r}] has no {pool!r} model")
            cm = np.asarray(by_model[pool]["confusion_matrix"], np.int64)
            values = {m: {kind: r[m] for kind, r in by_model.items() if m in r}
                      for m in METRICS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, RunError):
            raise
        raise RunError(f"{path}: not a ferjax summary ({type(e).__name__}: {e})") from None
    if cm.shape != (len(names), len(names)):
        raise RunError(f"{path}: confusion matrix {cm.shape} for {len(names)} classes")
    finished = (run.get("step") == run.get("total_steps") or run.get("early_stopped", False)) \
        and not run.get("preempted", False)
    return {"workdir": workdir, "class_names": names, "confusion_matrix": cm,
            "code": _code_of(workdir),
            "values": values, "finished": finished, "mean_of_last_k": next(
                (k[len("mean_last_"):] for k in run.get("accuracy", {})
                 if k.startswith("mean_last_")), "k"),
            "step": run.get("step"), "total_steps": run.get("total_steps")}


def _code_of(workdir: str) -> str | None:
    """'<ferjax commit>, jax <version>' of the last start in starts.jsonl (None for runs
    from before it was written)."""
    path = files.join(workdir, "starts.jsonl")
    if not files.exists(path):
        return None
    try:
        last = json.loads(files.read_text(path).strip().splitlines()[-1])
        return f"{last.get('ferjax_commit')}, jax {last.get('packages', {}).get('jax')}"
    except (ValueError, IndexError, AttributeError):
        return None


def _kinds(history: dict) -> dict:
    """{'last', 'best', 'mean_last'} of a summary.json metric, whose mean of the last k
    is named 'mean_last_<k>' after the config's train.mean_of_last_k."""
    out = {k: history[k] for k in ("last", "best") if k in history}
    out.update({"mean_last": v for k, v in history.items() if k.startswith("mean_last_")})
    return out


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1; NaN for one value) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")
    return float(np.mean(finite)), std


def summarize(runs: list[dict]) -> dict:
    """Mean ± std of every metric over `runs` (from load_run, one class list) and the
    metrics of their pooled confusion matrix."""
    names = runs[0]["class_names"]
    for run in runs[1:]:
        if run["class_names"] != names:
            raise RunError(f"{run['workdir']}: classes {run['class_names']} differ from "
                           f"{runs[0]['workdir']}'s {names}")
    stats = {}
    for metric in METRICS:
        for kind in KINDS:
            values = [r["values"].get(metric, {}).get(kind) for r in runs]
            if all(v is None for v in values):  # e.g. no mean of last k for final_splits
                continue
            mean, std = mean_and_std(values)
            stats[f"{metric}/{kind}"] = {"mean": mean, "std": std}
    pooled = sum(r["confusion_matrix"] for r in runs)
    summary = metrics.accuracy_summary(pooled)
    return {"runs": [r["workdir"] for r in runs], "class_names": names, "stats": stats,
            "pooled": {**metrics.headline(summary),
                       "per_class_accuracy": metrics.by_class(
                           names, summary["per_class_accuracy"]),
                       "confusion_matrix": pooled.tolist(),
                       "table": metrics.per_class_table(summary, names)}}


def _percent(value) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def format_table(runs: list[dict], result: dict | None) -> str:
    """One row per run (in %), then mean and std rows over the runs in `result`."""
    kinds = [k for k in KINDS if any(k in r["values"].get(m, {}) for r in runs for m in METRICS)]
    columns = [(m, k) for m in METRICS for k in kinds]
    ks = {r["mean_of_last_k"] for r in runs}
    short = dict(SHORT, mean_last=f"mean{ks.pop() if len(ks) == 1 else 'K'}")
    width = max([len("mean (n runs)")] + [len(r["workdir"]) + 13 for r in runs])
    head = f"{'run':<{width}} " + " ".join(f"{short[m] + ' ' + short[k]:>10}"
                                            for m, k in columns)
    lines = [head]
    for r in runs:
        label = r["workdir"] + ("" if r["finished"] else
                                f" (step {r['step']}/{r['total_steps']})")
        lines.append(f"{label:<{width}} " + " ".join(
            f"{_percent(r['values'].get(m, {}).get(k)):>10}" for m, k in columns))
    if result is not None:
        n = len(result["runs"])
        for row in ("mean", "std"):
            label = f"{row} ({n} run{'s' * (n != 1)})"
            lines.append(f"{label:<{width}} " + " ".join(
                f"{_percent(result['stats'].get(f'{m}/{k}', {}).get(row)):>10}" for m, k in columns))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = console.command_parser("ferjax.summarize", __doc__)
    parser.add_argument("workdirs", nargs="+", help="workdirs of finished runs")
    parser.add_argument("--include_unfinished", action="store_true",
                        help="count runs that stopped before their last step in the mean")
    parser.add_argument("--split", default=None,
                        help="summarize this split of the runs' final_splits "
                             "(config.eval.final_splits) instead of the evaluation split")
    parser.add_argument("--pool", choices=("last", "best"), default="last",
                        help="whose confusion matrices to pool: the last models' or, with "
                             "--split, the best checkpoints'")
    parser.add_argument("--json", default=None, help="also write the summary to this file")
    parser.add_argument("--picture", default=None,
                        help="also draw the pooled confusion matrix to this PNG")
    args = parser.parse_args(argv)
    if args.pool == "best" and args.split is None:
        parser.error("--pool best needs --split: summary.json keeps only the last "
                     "evaluation's confusion matrix of the evaluation split")
    problems, runs = [], []
    for workdir in args.workdirs:
        try:
            runs.append(load_run(workdir, args.split, args.pool))
        except RunError as e:
            problems.append(str(e))
    counted = [r for r in runs if r["finished"] or args.include_unfinished]
    problems += [f"{r['workdir']}: stopped at step {r['step']} of {r['total_steps']}, left "
                 "out of the mean (--include_unfinished counts it)"
                 for r in runs if r not in counted]
    result = None
    try:
        result = summarize(counted) if counted else None
    except RunError as e:
        problems.append(str(e))
    if runs:
        print(format_table(runs, result))
    codes = {r["code"] for r in counted if r["code"]}
    if len(codes) > 1:  # worth knowing before comparing, not an error
        print("note: the runs come from different code: " + "; ".join(
            f"{r['workdir']}: {r['code']}" for r in counted if r["code"]), file=sys.stderr)
    if result is not None:
        pooled = result["pooled"]
        what = (f"{args.split} with the {args.pool} models" if args.split
                else "last evaluations")
        print(f"\npooled {what} of {len(counted)} run(s) (confusion matrices summed):"
              f" accuracy {_percent(pooled['accuracy'])}, mean class accuracy "
              f"{_percent(pooled['mean_class_accuracy'])}, macro F1 "
              f"{_percent(pooled['macro_f1'])}\n{pooled['table']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        if args.picture:
            metrics.save_confusion_png(np.asarray(pooled["confusion_matrix"]),
                                       result["class_names"], args.picture,
                                       f"pooled over {len(counted)} runs"
                                       + (f", {args.split} ({args.pool})" if args.split
                                          else ""))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not counted:
        print("error: no run to summarize", file=sys.stderr)
    return 1 if problems or result is None else 0


if __name__ == "__main__":
    sys.exit(main())
