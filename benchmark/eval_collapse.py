"""Which Atari 100k runs play in training but not in their final evaluation? (RESULTS.md, "Adam's
epsilon tested directly, and an evaluation that collapses")

For every finished run under the folders given, this compares two returns:
- the training return: the mean of the last 20 training episodes, which the agent prints at its
  last step into the launcher's `log.txt` (epsilon 0.01);
- the final evaluation's mean return from `summary.jsonl` (epsilon 0.001).

A run collapses when its training return is positive and its evaluation scores below `--below`
times it. Per experiment name, it prints how many runs collapse, and it lists those runs with
what their final evaluation recorded of the network's choices, where it did (runs since
2026-12-03): the share of the greedy choices that went to the most chosen action (100%: a policy
stuck on one action) and, since 2026-12-04, the median lead of the greedy action's Q-value over
the next best action's.

    python benchmark/eval_collapse.py benchmark/results/atari100k_fidelity benchmark/results/fig12_16 \\
        benchmark/results/adam_eps_probe --below 0.25 --out benchmark/results/eval_collapse.json
"""

import argparse
import collections
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import UserError, final_score, find_run_dirs, read_run  # noqa: E402

TRAINING_RETURN = re.compile(r"^step +([\d,]+)/([\d,]+) .*return\(last 20\) +(-?[\d.]+|nan)", re.MULTILINE)


def training_return(run_dir: str) -> float | None:
    """The mean of the last 20 training episodes that the agent printed at its last step, from the
    launcher's `log.txt` beside the run folder; None without a log or that line."""
    log = os.path.join(os.path.dirname(run_dir), "log.txt")
    if not os.path.exists(log):
        return None
    with open(log) as f:
        steps = TRAINING_RETURN.findall(f.read())
    if not steps or steps[-1][0] != steps[-1][1]:
        return None
    return float(steps[-1][2])


def greedy_choices(run_dir: str) -> dict:
    """From the run's last evaluation record: the most chosen action's share of the greedy choices
    and the greedy action's median Q-value lead, each None where the record has none."""
    last = {}
    with open(os.path.join(run_dir, "summary.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("eval"):
                last = record
    counts = last.get("eval_greedy_counts")
    return {"top_action_share": max(counts) / sum(counts) if counts and sum(counts) else None,
            "q_margin_median": last.get("eval_q_margin_median")}


def finished_runs(folders: list[str]) -> list[dict]:
    """Each finished run under `folders` that has a training return: its experiment name, game,
    seed, training return and final evaluation (aggregate.py's final score)."""
    runs = []
    for path in find_run_dirs(folders):
        run = read_run(path)
        evaluation = final_score(run.points, None, 1) if run.finished and not run.reason else None
        training = training_return(path)
        if evaluation is not None and training is not None:
            runs.append({"exp_name": run.config.get("exp_name", ""), "game": run.game, "seed": run.seed,
                         "training": training, "evaluation": evaluation, **greedy_choices(path)})
    if not runs:
        raise UserError("no finished run with a launcher log.txt under those folders")
    return runs


def collapses(run: dict, below: float) -> bool:
    return run["training"] > 0 and run["evaluation"] < below * run["training"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="sweep folders (searched recursively): runs started by launch.py")
    parser.add_argument("--below", type=float, default=0.25, help="collapsed: evaluation below this fraction of training")
    parser.add_argument("--out", help="write the runs and the counts as JSON here")
    opts = parser.parse_args(argv)
    if not 0 < opts.below <= 1:
        parser.error(f"--below takes a fraction in (0, 1], got {opts.below}")
    try:
        runs = finished_runs(opts.folders)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    by_name = collections.defaultdict(lambda: [0, 0])
    for run in runs:
        run["collapsed"] = collapses(run, opts.below)
        by_name[run["exp_name"]][0] += run["collapsed"]
        by_name[run["exp_name"]][1] += 1
    print(f"| experiment | runs whose evaluation is below {opts.below} x training |")
    print("|---|---|")
    for name, (bad, total) in sorted(by_name.items()):
        print(f"| {name} | {bad} of {total} |")
    print("\n| experiment | game | seed | training (last 20 episodes) | evaluation | top action | Q-value lead |\n"
          "|---|---|---|---|---|---|---|")
    for run in runs:
        if run["collapsed"]:
            share, lead = run["top_action_share"], run["q_margin_median"]
            print(f"| {run['exp_name']} | {run['game']} | {run['seed']} | {run['training']:.1f} | {run['evaluation']:.1f} | "
                  f"{'-' if share is None else f'{share:.0%}'} | {'-' if lead is None else f'{lead:.3g}'} |")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump({"below": opts.below, "counts": {n: {"collapsed": b, "runs": t} for n, (b, t) in by_name.items()},
                       "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
