"""Where our runs fall among an agent's published runs, game by game (issue 8).

    python benchmark/rank_against_published.py benchmark/results/atari100k_fidelity/drq_none_100k__* \
        --published "DrQ(eps).json" --out /tmp/rank_drq.csv

--published is a JSON file of the published runs' final scores, {game: [score of each run]}: the
format of rliable's released Atari 100k data (gs://rl-benchmark-data/atari_100k/, e.g.
`DrQ(eps).json`: Agarwal et al. 2021, 100 runs per game; a copy is in the IRIS repository,
github.com/eloialonso/iris, results/data/). It is not in this repository.

Each of our runs gets its percentile among the published runs of its game (mid-rank: ties count
half). If our agent is the published one, every such percentile is a draw from Uniform(0, 1), even
with one seed per game, so their mean is 0.5 give or take 1/sqrt(12 n) and a Kolmogorov-Smirnov
test against the uniform distribution does not reject. A mean well above 0.5 means our runs score
higher than the published ones, well below lower. Prints a Markdown table and the test."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

import numpy as np
import scipy.stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import UserError, final_score, find_run_dirs, natural_key, read_run, table_key  # noqa: E402


def percentile_among(score: float, published: np.ndarray) -> float:
    """The fraction of published runs below `score`, ties counting half."""
    return float((np.sum(published < score) + 0.5 * np.sum(published == score)) / len(published))


def load_published(path: str) -> dict[str, np.ndarray]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read --published {path} ({e}): pass a JSON file of {{game: [final score of each run]}}")
    if not isinstance(data, dict) or not all(isinstance(v, list) and v for v in data.values()):
        raise UserError(f"--published {path} must map each game to a non-empty list of run scores")
    return {table_key(game): np.asarray(scores, dtype=float) for game, scores in data.items()}


def rank(runs_dirs: list[str], published: dict[str, np.ndarray]) -> tuple[list[dict], dict]:
    rows = []
    for path in find_run_dirs(runs_dirs):
        run = read_run(path)
        score = final_score(run.points, None, 1) if run.finished else None  # aggregate.py's score of a run
        if run.reason or score is None or table_key(run.game) not in published:
            continue
        theirs = published[table_key(run.game)]
        rows.append({"game": run.game, "seed": run.seed, "exp_name": run.config.get("exp_name", ""), "score": score,
                     "published_runs": len(theirs), "published_mean": float(theirs.mean()),
                     "published_p5": float(np.percentile(theirs, 5)), "published_p95": float(np.percentile(theirs, 95)),
                     "percentile": percentile_among(score, theirs)})
    if not rows:
        raise UserError("no finished run of a game in --published: pass the run folders of one agent")
    rows.sort(key=lambda r: (natural_key(r["game"]), natural_key(str(r["seed"]))))
    p = np.array([r["percentile"] for r in rows])
    test = scipy.stats.kstest(p, "uniform")
    summary = {"runs": len(p), "games": len({r["game"] for r in rows}), "mean_percentile": float(p.mean()),
               "standard_error_if_same": 1 / math.sqrt(12 * len(p)), "ks_statistic": float(test.statistic),
               "ks_p_value": float(test.pvalue)}
    return rows, summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders of one agent (searched recursively)")
    parser.add_argument("--published", required=True, help="JSON {game: [final score of each published run]}")
    parser.add_argument("--out", help="CSV file of the per-run rows")
    args = parser.parse_args(argv)
    try:
        rows, s = rank(args.runs, load_published(args.published))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = sorted({r["exp_name"] for r in rows})
    print(f"# {', '.join(names)} among the runs of {os.path.basename(args.published)}\n")
    print("| game | seed | our score | published mean | published 5-95% | percentile |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['game']} | {r['seed']} | {r['score']:,.1f} | {r['published_mean']:,.1f} | "
              f"{r['published_p5']:,.1f} to {r['published_p95']:,.1f} | {r['percentile']:.2f} |")
    print(f"\n{s['runs']} runs on {s['games']} games: mean percentile {s['mean_percentile']:.3f} "
          f"(0.5 +- {s['standard_error_if_same']:.3f} if ours were the published agent); "
          f"Kolmogorov-Smirnov against uniform: D = {s['ks_statistic']:.3f}, p = {s['ks_p_value']:.3f}")
    if len(names) > 1:
        print(f"warning: runs of {len(names)} experiments ranked together ({', '.join(names)})", file=sys.stderr)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
