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
higher than the published ones, well below lower.

Then the aggregates (human-normalised IQM, median, mean, optimality gap) of ours and of the
published runs on our games, each with its 95% stratified-bootstrap CI, and the comparison that
matches sample sizes: the 95% range of each aggregate over many draws of as many published runs per
game as we have (without replacement). If ours is the published agent, our aggregate falls in that
range 95 times in 100; the CIs alone cannot say this, as ours (3 runs a game) is far wider than
theirs (100). Where games have unequal numbers of our runs, the matrices keep the fewest (lowest
seeds), and a second table uses all of them: the IQM and the optimality gap over the runs pooled,
the median and the mean over the games' means, against draws of as many published runs per game.
Last, game by game, an exact rank-sum test of our runs against the published ones, with the
p-values adjusted over the games (Holm): the pooled tests can miss a game where every seed lands at
one end, or games that err in opposite directions. And a test of a seed effect: whether some seeds
score higher on every game (a seed fixes the initial network of all games alike, and in a sweep it
can stand for the code and machine that ran it). Prints Markdown; --plot draws each game's runs
against the published spread, and the percentiles' distribution against the uniform."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import Counter

import numpy as np
import scipy.stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import (METRICS, UserError, aggregate_metrics, default_tables, final_score, find_run_dirs,  # noqa: E402
                       interval_estimate, load_tables, natural_key, normalise, plt, read_run, save, table_key)


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
    rows, unfinished = [], []
    for path in find_run_dirs(runs_dirs):
        run = read_run(path)
        score = final_score(run.points, None, 1) if run.finished else None  # aggregate.py's score of a run
        if run.reason or table_key(run.game) not in published:
            continue
        if score is None:
            unfinished.append(f"{run.game} seed {run.seed}")
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
               "ks_p_value": float(test.pvalue), "unfinished": sorted(unfinished, key=natural_key)}
    return rows, summary


def rows_by_game(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each game, in their order (rows come sorted by game, then seed)."""
    by_game: dict[str, list[dict]] = {}
    for r in rows:
        by_game.setdefault(r["game"], []).append(r)
    return by_game


def rank_sum_test(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Two-sided exact Wilcoxon rank-sum (Mann-Whitney) test of our runs against the published
    ones of a game: if ours are draws of the same agent, they are a random subset of the pooled runs,
    and the p-value is the chance that such a subset's rank sum lies as far out. Ties get mid-ranks;
    the rank sum's null distribution is counted exactly over all subsets (small m: a few seeds)."""
    pooled = np.concatenate([ours, theirs])
    doubled = np.rint(2 * scipy.stats.rankdata(pooled)).astype(int)  # mid-ranks x 2: integers
    m, top = len(ours), int(doubled.sum())
    ways = np.zeros((m + 1, top + 1))  # ways[j, s]: subsets of j runs whose doubled ranks sum to s
    ways[0, 0] = 1.0
    for r in doubled:
        ways[1:, r:] += ways[:-1, :top + 1 - r].copy()
    null = ways[m] / ways[m].sum()
    t = int(doubled[:m].sum())
    return float(min(1.0, 2 * min(null[:t + 1].sum(), null[t:].sum())))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: an adjusted p below alpha keeps the family-wise error at alpha."""
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - i) * p_values[k]))
        adjusted[k] = running
    return adjusted.tolist()


def games_that_differ(rows: list[dict], published: dict[str, np.ndarray]) -> list[dict]:
    """Game by game: our runs' mean percentile, the rank-sum test's p-value against the published
    runs, and that p-value adjusted over all the games (Holm). The pooled tests above can miss a
    game where every seed lands at one end, or games that err in opposite directions."""
    out = [{"game": g, "runs": len(v), "mean_percentile": float(np.mean([r["percentile"] for r in v])),
            "p_value": rank_sum_test(np.array([r["score"] for r in v]), published[table_key(g)])}
           for g, v in rows_by_game(rows).items()]
    for row, adjusted in zip(out, holm([row["p_value"] for row in out])):
        row["holm_p_value"] = adjusted
    return out


def seed_effect(rows: list[dict], reps: int = 2000, seed: int = 0) -> dict | None:
    """Do some seeds score higher than others on every game? A seed fixes the initial network of
    every game alike, and in a sweep it can also stand for the code and the machine that ran it.
    On the games that have every seed that half the games have: the spread (variance) of the
    seeds' mean percentiles, against `reps` shuffles of the seeds within each game (if the seed
    does not matter, they are exchangeable). None with fewer than two seeds or games."""
    seeds_of: dict[str, dict] = {}
    for r in rows:
        seeds_of.setdefault(r["game"], {})[r["seed"]] = r["percentile"]
    counts = Counter(s for seeds in seeds_of.values() for s in seeds)
    seeds = sorted((s for s, n in counts.items() if 2 * n >= len(seeds_of)), key=lambda s: natural_key(str(s)))
    games = [g for g, v in seeds_of.items() if all(s in v for s in seeds)]
    if len(seeds) < 2 or len(games) < 2:
        return None
    table = np.array([[seeds_of[g][s] for s in seeds] for g in games])  # games x seeds
    shuffles = np.argsort(np.random.default_rng(seed).random((reps, *table.shape)), axis=2)
    spreads = np.take_along_axis(np.broadcast_to(table, shuffles.shape), shuffles, axis=2).mean(axis=1).var(axis=1)
    observed = table.mean(axis=0).var()
    return {"seeds": seeds, "games": len(games), "mean_percentile": table.mean(axis=0).tolist(),
            "p_value": float((1 + np.sum(spreads >= observed - 1e-12)) / (1 + reps))}


def print_games_that_differ(per_game: list[dict], effect: dict | None, alpha: float = 0.05) -> None:
    print(f"\nGame by game: exact rank-sum test of our runs against the published ones, p-values adjusted over "
          f"the {len(per_game)} games (Holm); * where the adjusted p is below {alpha}\n")
    print("| game | runs | mean percentile | p | adjusted p |\n|---|---|---|---|---|")
    for r in sorted(per_game, key=lambda r: r["p_value"]):
        flag = " *" if r["holm_p_value"] < alpha else ""
        print(f"| {r['game']} | {r['runs']} | {r['mean_percentile']:.2f} | {r['p_value']:.2g} | {r['holm_p_value']:.2g}{flag} |")
    if effect is not None:
        means = ", ".join(f"seed {s} {m:.3f}" for s, m in zip(effect["seeds"], effect["mean_percentile"]))
        print(f"\nSeeds on the {effect['games']} games that have each of them: mean percentile {means}; "
              f"a seed effect (seeds shuffled within each game): p = {effect['p_value']:.3g}")


def score_matrices(rows: list[dict], published: dict[str, np.ndarray], tables: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Human-normalised runs x games matrices, ours and the published runs', on the games of our runs.
    Every game keeps as many of our runs as the game with fewest (lowest seeds, as aggregate.py)."""
    by_game = rows_by_game(rows)
    games = list(by_game)
    missing = [g for g in games if tables.get(table_key(g)) is None or None in (tables[table_key(g)].zero, tables[table_key(g)].one)]
    if missing:
        raise UserError(f"no human and random scores for {', '.join(missing)} in benchmark/atari_human_random.csv")
    norm = {g: tables[table_key(g)] for g in games}
    n_ours = min(len(v) for v in by_game.values())
    n_theirs = min(len(published[table_key(g)]) for g in games)
    ours = np.array([[normalise(by_game[g][i]["score"], norm[g]) for g in games] for i in range(n_ours)])
    theirs = np.stack([normalise(published[table_key(g)][:n_theirs], norm[g]) for g in games], axis=1)
    return games, ours, theirs


def subsample_range(theirs: np.ndarray, n: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The aggregates of `reps` draws of n published runs per game (without replacement): their
    2.5 and 97.5 percentiles (2 x metrics) and all the draws (reps x metrics)."""
    rng = np.random.default_rng(seed)
    draws = np.empty((reps, len(METRICS)))
    for i in range(reps):
        pick = np.argsort(rng.random(theirs.shape), axis=0)[:n]  # n distinct runs of each game
        draws[i] = aggregate_metrics(np.take_along_axis(theirs, pick, axis=0))
    return np.percentile(draws, [2.5, 97.5], axis=0), draws


def compare_aggregates(rows: list[dict], published: dict[str, np.ndarray], tables: dict, reps: int, seed: int = 0) -> dict:
    games, ours, theirs = score_matrices(rows, published, tables)
    ours_point, ours_ci = interval_estimate(ours, aggregate_metrics, reps, seed)
    theirs_point, theirs_ci = interval_estimate(theirs, aggregate_metrics, reps, seed)
    expected, draws = subsample_range(theirs, len(ours), reps, seed)
    return {"games": games, "runs_per_game": len(ours), "published_runs_per_game": len(theirs),
            "ours": (ours_point, ours_ci), "published": (theirs_point, theirs_ci), "expected": expected,
            "share_of_draws_below": (draws < ours_point).mean(axis=0), "ours_matrix": ours}


def ragged_metrics(columns: list[np.ndarray]) -> np.ndarray:
    """aggregate_metrics on games with unequal numbers of runs (one array of normalised scores a
    game): the IQM and the optimality gap over all the runs pooled, the median and the mean over
    the games' mean scores. With equal numbers these are rliable's (aggregate_metrics)."""
    pooled = np.concatenate(columns)
    per_game = np.array([c.mean() for c in columns])
    return np.array([scipy.stats.trim_mean(pooled, 0.25), np.median(per_game), per_game.mean(),
                     1.0 - np.minimum(pooled, 1.0).mean()])


def compare_all_runs(rows: list[dict], published: dict[str, np.ndarray], tables: dict, reps: int, seed: int = 0) -> dict:
    """The aggregates of all our runs, however many each game has, and where they fall among
    `reps` draws of as many published runs per game (without replacement). No bootstrap CI of
    ours: a game with one run has nothing to resample."""
    by_game = {g: [normalise(r["score"], tables[table_key(g)]) for r in v] for g, v in rows_by_game(rows).items()}
    games = list(by_game)
    ours = ragged_metrics([np.array(by_game[g]) for g in games])
    theirs = [normalise(published[table_key(g)], tables[table_key(g)]) for g in games]
    rng = np.random.default_rng(seed)
    draws = np.array([ragged_metrics([rng.choice(t, size=len(by_game[g]), replace=False) for g, t in zip(games, theirs)])
                      for _ in range(reps)])
    return {"games": games, "runs": sum(len(v) for v in by_game.values()), "ours": ours,
            "expected": np.percentile(draws, [2.5, 97.5], axis=0), "share_of_draws_below": (draws < ours).mean(axis=0)}


def print_all_runs(c: dict) -> None:
    print(f"\nAll {c['runs']} runs on {len(c['games'])} games (unequal runs per game: IQM and optimality gap over "
          f"the runs pooled, median and mean over the games' means), against as many published runs per game drawn "
          f"at random\n")
    print("| metric | ours | published, as many runs per game: 95% range | draws below ours |\n|---|---|---|---|")
    for i, name in enumerate(METRICS):
        print(f"| {name} | {c['ours'][i]:.3f} | {c['expected'][0, i]:.3f} to {c['expected'][1, i]:.3f} | "
              f"{c['share_of_draws_below'][i]:.1%} |")


def print_comparison(c: dict) -> None:
    n = c["runs_per_game"]
    print(f"\nHuman-normalised aggregates on {len(c['games'])} games, 95% CIs (stratified bootstrap); the last "
          f"columns: {n} published run(s) per game drawn at random, where ours falls if it is their agent\n")
    print(f"| metric | ours ({n} run(s) per game) | published ({c['published_runs_per_game']} runs per game) | "
          f"published, {n} run(s) per game: 95% range | draws below ours |\n|---|---|---|---|---|")
    (op, oc), (tp, tc), e = c["ours"], c["published"], c["expected"]
    for i, name in enumerate(METRICS):
        print(f"| {name} | {op[i]:.3f} ({oc[0, i]:.3f} to {oc[1, i]:.3f}) | {tp[i]:.3f} ({tc[0, i]:.3f} to {tc[1, i]:.3f}) | "
              f"{e[0, i]:.3f} to {e[1, i]:.3f} | {c['share_of_draws_below'][i]:.1%} |")


def plot_against_published(rows: list[dict], tables: dict, summary: dict, path: str) -> None:
    """Left: each game's published 5-95% range and mean with our runs on it (human-normalised).
    Right: the empirical distribution of our percentiles against the uniform (ours = theirs)."""
    games = sorted({r["game"] for r in rows}, key=natural_key, reverse=True)  # first game on top
    y = {g: i for i, g in enumerate(games)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.28 * len(games) + 1.5), gridspec_kw={"width_ratios": [3, 2]})
    for g in games:
        row = tables[table_key(g)]
        first = next(r for r in rows if r["game"] == g)
        p5, p95, mean = (normalise(first[k], row) for k in ("published_p5", "published_p95", "published_mean"))
        left.plot([p5, p95], [y[g], y[g]], color="0.7", lw=5, solid_capstyle="butt", label="published 5-95%" if g == games[0] else None)
        left.plot([mean], [y[g]], "|", color="0.2", ms=12, mew=2, label="published mean" if g == games[0] else None)
    ours = [(normalise(r["score"], tables[table_key(r["game"])]), y[r["game"]]) for r in rows]
    left.plot(*zip(*ours), "o", color="tab:blue", ms=4, alpha=0.8, label="ours, one run each")
    left.set_xscale("symlog", linthresh=1.0)
    left.set_yticks(range(len(games)), games)
    left.set_xlabel("Human Normalized Score (symlog)")
    left.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=3, fontsize="small", frameon=False)
    p = np.sort([r["percentile"] for r in rows])
    right.step(np.concatenate([[0], p, [1]]), np.concatenate([[0], np.arange(1, len(p) + 1) / len(p), [1]]), where="post",
               label=f"ours: mean {summary['mean_percentile']:.2f}")
    right.plot([0, 1], [0, 1], "--", color="0.5", label="uniform: ours = theirs")
    right.set_xlabel("percentile among the published runs of its game")
    right.set_ylabel("fraction of our runs")
    right.set_title(f"{summary['runs']} runs, KS p = {summary['ks_p_value']:.3f}", fontsize="medium")
    right.legend(loc="upper left", fontsize="small")
    save(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders of one agent (searched recursively)")
    parser.add_argument("--published", required=True, help="JSON {game: [final score of each published run]}")
    parser.add_argument("--out", help="CSV file of the per-run rows")
    parser.add_argument("--plot", help="PNG file: our runs against the published spread, game by game")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples and published draws")
    args = parser.parse_args(argv)
    try:
        published = load_published(args.published)
        rows, s = rank(args.runs, published)
        tables = load_tables(default_tables())
        comparison = compare_aggregates(rows, published, tables, args.reps)
        runs_per_game = Counter(r["game"] for r in rows).values()
        all_runs = compare_all_runs(rows, published, tables, args.reps) if len(set(runs_per_game)) > 1 else None
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
    print_comparison(comparison)
    if all_runs is not None:
        print_all_runs(all_runs)
    print_games_that_differ(games_that_differ(rows, published), seed_effect(rows, args.reps))
    if args.plot:
        plot_against_published(rows, tables, s, args.plot)
    if len(names) > 1:
        print(f"warning: runs of {len(names)} experiments ranked together ({', '.join(names)})", file=sys.stderr)
    if s["unfinished"]:
        shown = ", ".join(s["unfinished"][:8]) + (", ..." if len(s["unfinished"]) > 8 else "")
        print(f"warning: {len(s['unfinished'])} run(s) without a final score left out ({shown}): runs cut short by "
              "time are not a random sample (the longest episodes evaluate longest, weak agents that stay alive among them)", file=sys.stderr)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
