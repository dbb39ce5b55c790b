"""Which Atari 100k runs play in training but not in their final evaluation? (RESULTS.md, "Adam's
epsilon tested directly, and an evaluation that collapses")

For every finished run under the folders given, this compares two returns:
- the training return: the mean of the last 20 training episodes, which the agent prints at its
  last step into the launcher's `log.txt` (epsilon 0.01);
- the final evaluation's mean return from `summary.jsonl` (epsilon 0.001).

A run collapses when its training return is positive and its evaluation scores below `--below`
times it. Per experiment name, it prints how many runs collapse, and it lists those runs.

    python benchmark/eval_collapse.py benchmark/results/atari100k_fidelity benchmark/results/fig12_16 \\
        benchmark/results/adam_eps_probe --below 0.25 --out benchmark/results/eval_collapse.json
"""

import argparse
import collections
import glob
import json
import os
import re

TRAINING_RETURN = re.compile(r"^step +([\d,]+)/([\d,]+) .*return\(last 20\) +(-?[\d.]+|nan)", re.MULTILINE)


def run_returns(sweep_run: str) -> dict | None:
    """One launcher run folder (`log.txt` beside the agent's run folder): its experiment name,
    game, seed, training return at the last step and final evaluation; None if it has not finished
    or its log printed no training return at its last step."""
    finals = []
    for path in glob.glob(os.path.join(sweep_run, "*", "summary.jsonl")):
        with open(path) as f:
            finals += [r for r in map(json.loads, f) if r.get("final")]
    log = os.path.join(sweep_run, "log.txt")
    if len(finals) != 1 or not os.path.exists(log):
        return None
    with open(log) as f:
        steps = [(int(s.replace(",", "")), int(t.replace(",", "")), float(r)) for s, t, r in TRAINING_RETURN.findall(f.read())]
    if not steps or steps[-1][0] != steps[-1][1]:
        return None
    final = finals[0]
    name = os.path.basename(sweep_run.rstrip("/")).split("__")[0]
    return {"exp_name": name, "game": final["game"], "seed": final["seed"], "training": steps[-1][2],
            "evaluation": final["eval_return"]}


def collapses(run: dict, below: float) -> bool:
    return run["training"] > 0 and run["evaluation"] < below * run["training"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="sweep folders: one launcher run folder (log.txt) per run")
    parser.add_argument("--below", type=float, default=0.25, help="collapsed: evaluation below this fraction of training")
    parser.add_argument("--out", help="write the runs and the counts as JSON here")
    opts = parser.parse_args()
    if not 0 < opts.below <= 1:
        parser.error(f"--below takes a fraction in (0, 1], got {opts.below}")
    runs = []
    for folder in opts.folders:
        if not os.path.isdir(folder):
            parser.error(f"{folder} is not a folder of runs")
        runs += [r for r in map(run_returns, sorted(glob.glob(os.path.join(folder, "*", "")))) if r]
    if not runs:
        parser.error("no finished run with a log.txt under those folders")
    by_name = collections.defaultdict(lambda: [0, 0])
    for run in runs:
        run["collapsed"] = collapses(run, opts.below)
        by_name[run["exp_name"]][0] += run["collapsed"]
        by_name[run["exp_name"]][1] += 1
    print(f"| experiment | runs whose evaluation is below {opts.below} x training |")
    print("|---|---|")
    for name, (bad, total) in sorted(by_name.items()):
        print(f"| {name} | {bad} of {total} |")
    print("\n| experiment | game | seed | training (last 20 episodes) | evaluation |\n|---|---|---|---|---|")
    for run in runs:
        if run["collapsed"]:
            print(f"| {run['exp_name']} | {run['game']} | {run['seed']} | {run['training']:.1f} | {run['evaluation']:.1f} |")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump({"below": opts.below, "counts": {n: {"collapsed": b, "runs": t} for n, (b, t) in by_name.items()},
                       "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
