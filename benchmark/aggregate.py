"""Aggregate runs as the paper reports them (Agarwal et al. 2021, with rliable): human-normalised
final scores; IQM, median, mean and optimality gap with 95% stratified-bootstrap confidence
intervals; sample-efficiency curves (IQM per iteration); performance profiles; probability of
improvement over a baseline; per-game final scores. Markdown on stdout and in summary.md, CSV
tables, PNG plots.

    python benchmark/aggregate.py runs/fig1 --baseline fig1_dqn_baseline_e1
    python benchmark/aggregate.py runs/fig1 --at-frames 40e6 --sweep num_experts --series-by moe
    python benchmark/aggregate.py runs/mujoco --raw      # a domain without a normalisation table

Runs: every folder under RUNS with a config.json (the agent's flags) and a summary.jsonl is a run.
Its scores are its evaluation returns (`eval` records: the Atari 100k agents) when it has any,
else the mean training-episode return of each iteration (what Dopamine's TrainRunner reports:
the 200M-frame agents); an iteration in which no episode ended keeps the previous score. The
final score is the score of the last iteration (at or before --at-frames F; the mean of the last
--final-window K). A run without the final record is unfinished and left out (one warning line)
unless --include-unfinished.

Algorithms are the runs' `exp_name` (the sweeps set it to the configuration), or the values of
the config keys of --label-by. rliable needs a runs x games matrix per algorithm: an algorithm
with more runs on some games than on others keeps, on every game, the runs of its lowest seeds,
as many as on its game with fewest (a warning names what was left out). Games that some
algorithm lacks are left out of every aggregate (a warning names them).

Normalisation tables are the CSV files in benchmark/ whose header is `game,<score of 0>,<score
of 1>` (atari_human_random.csv: game,random,human; lines starting with # are comments), or the
files given with --table. Game names match loosely (ALE/Pong-v5, Pong and pong are one game). A
game in no table is an error (add a table, or pass --raw for raw scores); a game whose row is
empty (no published human score) is left out of the aggregates with a warning.

Writes to --out (default RUNS[0]/aggregate): summary.md, aggregates.csv, per_game.csv,
curves.csv, runs.csv, aggregates.png, curves.png, profiles.png, and improvement.png with
--baseline, sweep.png with --sweep. summary.md and runs.csv say which code (git commit, or the
agent file's SHA-256 outside git) and which device made each run, from the `provenance` the agents
write into config.json."""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics, plot_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = ("IQM", "Median", "Mean", "Optimality Gap")
# Config keys that say where and how a run ran, not what it learns: runs of one algorithm may differ in them.
BOOKKEEPING = {"exp_name", "seed", "env_id", "num_actions", "torch_deterministic", "device", "track",
               "wandb_project_name", "wandb_entity", "capture_video", "runs_dir", "log_every", "checkpoint_every",
               "resume", "cudagraphs", "compile", "provenance"}


class UserError(Exception):
    """Bad input: main() prints `error: <message>` and exits with status 2."""


# ---- runs ----
@dataclass
class Run:
    path: str
    config: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    finished: bool = False
    game: str = ""
    seed: int | None = None
    label: str = ""
    points: list = field(default_factory=list)  # (index, frames, score or None), in order
    hours: list = field(default_factory=list)  # wall-clock hours of training at each point, or None
    final: float | None = None  # raw final score
    reason: str = ""  # why it is out of the aggregates; empty while it is in


def find_run_dirs(roots: list[str]) -> list[str]:
    found = []
    for root in roots:
        if not os.path.isdir(root):
            raise UserError(f"{root} is not a folder: pass the folders the agents wrote runs to (their --runs-dir)")
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            if "config.json" in files and "summary.jsonl" in files:
                found.append(os.path.realpath(folder))
    return sorted(set(found))  # overlapping RUNS arguments count a run once


def read_run(path: str) -> Run:
    run = Run(path)
    try:
        with open(os.path.join(path, "config.json")) as f:
            run.config = json.load(f)
        with open(os.path.join(path, "summary.jsonl")) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        run.reason = f"unreadable ({e})"
        return run
    for i, line in enumerate(lines):
        try:
            run.records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:  # a last line can be half-written by a run still going
                run.reason = f"summary.jsonl line {i + 1} is not JSON"
                return run
    if not isinstance(run.config, dict) or not all(isinstance(r, dict) for r in run.records):
        run.reason = "config.json or summary.jsonl does not hold JSON objects"
        run.config, run.records = {}, []
        return run
    final = next((r for r in run.records if r.get("final")), {})
    run.finished = bool(final)
    run.game = final.get("game") or game_of(final.get("env_id") or run.config.get("env_id") or "")
    run.seed = run.config.get("seed", final.get("seed"))
    run.points = score_points(run.records)
    run.hours = training_hours(run.records, len(run.points))
    if not run.game:
        run.reason = "no env_id in config.json"
    return run


def score_points(records: list[dict]) -> list[tuple]:
    """(index, frames, score) of a run: its evaluations when it has any, else its iterations'
    training returns. A missing score repeats the previous one."""
    evals = [r for r in records if r.get("eval")]
    if evals:
        chosen, key = evals, "eval_return"
    else:
        chosen, key = [r for r in records if "iteration" in r and not r.get("final")], "episode_return"
    final = next((r for r in records if r.get("final")), None)
    if not chosen and final is not None:  # an agent that reports only its final score
        chosen, key = [final], next((k for k in ("score", "eval_return", "episode_return") if k in final), "score")
    points, last = [], None
    for i, record in enumerate(chosen):
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            last = float(value)
        points.append((i, record.get("frames", record.get("step", i)), last))
    return points


def training_hours(records: list[dict], count: int) -> list:
    """Wall-clock hours of training at the end of each iteration, from the iterations' steps/s
    (evaluations and pauses excluded); None where a run reports no iterations (appendix E plots
    the IQM against these hours)."""
    if any(r.get("eval") for r in records):
        return [None] * count
    hours, seconds, step = [], 0.0, 0
    for r in records:
        if "iteration" in r and not r.get("final"):
            if r.get("sps"):
                seconds += (r["step"] - step) / r["sps"]
            step = r["step"]
            hours.append(seconds / 3600)
    return hours if len(hours) == count else [None] * count


def game_of(env_id: str) -> str:
    """`ALE/Pong-v5` -> `Pong`, as the agents name their games."""
    return env_id.split("/")[-1].split("-")[0]


def cut_points(points: list[tuple], at_frames: float | None) -> list[tuple]:
    return [p for p in points if at_frames is None or p[1] <= at_frames]


def final_score(points: list[tuple], at_frames: float | None, window: int) -> float | None:
    scores = [score for _, _, score in cut_points(points, at_frames)[-window:] if score is not None]
    return float(np.mean(scores)) if scores else None


def shown(path: str) -> str:
    """A path as the user would type it: relative to the working folder when under it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return str(value)


def label_of(config: dict, keys: list[str]) -> str:
    values = [(k, format_value(config.get(k))) for k in keys]
    return " ".join(value if k == "exp_name" else f"{k}={value}" for k, value in values)


def natural_key(text: str) -> list:
    """e2 < e4 < e16, as a person sorts them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# ---- normalisation ----
@dataclass
class Row:
    game: str
    zero: float | None  # the score normalised to 0 (random)
    one: float | None  # the score normalised to 1 (human)
    names: tuple  # the table's column names, e.g. ("random", "human")
    source: str


def table_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", game_of(name).lower())
    return re.sub(r"(noframeskip|deterministic)$", "", key)


def default_tables() -> list[str]:
    return [path for path in sorted(glob.glob(os.path.join(HERE, "*.csv"))) if table_header(path)[:1] == ["game"]]


def table_header(path: str) -> list[str]:
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                return [cell.strip() for cell in line.split(",")]
    return []


def load_tables(paths: list[str]) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for path in paths:
        try:
            with open(path) as f:
                lines = [line for line in f if line.strip() and not line.startswith("#")]
        except OSError as e:
            raise UserError(f"cannot read the normalisation table {path} ({e.strerror})")
        table = list(csv.reader(lines))
        if not table or len(table[0]) != 3 or table[0][0].strip() != "game":
            raise UserError(f"{path} is not a normalisation table: its header must be game,<score of 0>,<score of 1>")
        names = (table[0][1].strip(), table[0][2].strip())
        for cells in table[1:]:
            row = parse_row(cells, names, path)
            known = rows.get(table_key(row.game))
            if known is not None and (known.zero, known.one) != (row.zero, row.one):
                raise UserError(f"{row.game} has two different rows in the tables {known.source} and {path}")
            rows[table_key(row.game)] = row
    return rows


def parse_row(cells: list[str], names: tuple, path: str) -> Row:
    try:
        game, zero, one = (cell.strip() for cell in cells)
        row = Row(game, float(zero) if zero else None, float(one) if one else None, names, path)
    except ValueError:
        raise UserError(f"bad row {','.join(cells)} in {path}: expected game,<number or empty>,<number or empty>")
    if row.zero is not None and row.zero == row.one:
        raise UserError(f"bad row for {game} in {path}: its two scores are equal, nothing can be normalised by them")
    return row


def normalise(score, row: Row | None):
    """(score - random) / (human - random); the identity without a row (--raw)."""
    return score if row is None else (score - row.zero) / (row.one - row.zero)


def score_label(rows: list[Row | None]) -> str:
    if not rows or rows[0] is None:
        return "Score"
    return "Human Normalized Score" if all(r.names[1] == "human" for r in rows) else "Normalized Score"


# ---- choosing the runs ----
def select_runs(runs: list[Run], args, say) -> None:
    """Set `reason` on every run that cannot enter the aggregates (before normalisation)."""
    unfinished = [r for r in runs if not r.reason and not r.finished]
    if unfinished and not args.include_unfinished:
        for r in unfinished:
            r.reason = "unfinished (no final record)"
        say(f"{runs_count(len(unfinished), 'unfinished run')} left out (no final record; --include-unfinished "
            f"aggregates what they have): {short_list(shown(r.path) for r in unfinished)}")
    for r in runs:
        if not r.reason:
            r.final = final_score(r.points, args.at_frames, args.final_window)
            if r.final is None:
                at = f" at or before {args.at_frames:,.0f} frames" if args.at_frames else ""
                r.reason = f"no score{at} (no episode ended, no evaluation)"
    if args.at_frames:
        short = [r for r in runs if not r.reason and r.points[-1][1] < args.at_frames]
        if short:
            say(f"{runs_count(len(short))} end before {args.at_frames:,.0f} frames; their final score is their last "
                f"iteration's: {short_list(shown(r.path) for r in short)}")
    seen = {}
    for r in runs:
        if not r.reason:
            key = (r.label, r.game, r.seed, flags_of(r.config))
            if key in seen:
                r.reason = f"same algorithm, flags, game and seed as {shown(seen[key])}"
                say(f"{shown(r.path)} repeats {shown(seen[key])} ({r.label} on {r.game}, seed {r.seed}): left out")
            seen.setdefault(key, r.path)


def flags_of(config: dict) -> str:
    """The flags that change what a run learns, as one comparable string."""
    return json.dumps({k: v for k, v in config.items() if k not in BOOKKEEPING}, sort_keys=True)


def commit_of(provenance: dict) -> str | None:
    """A run's git commit, short, marked when the agent file differed from it."""
    commit = provenance.get("git_commit")
    if not commit:
        return f"sha256 {provenance['code_sha256'][:12]}" if provenance.get("code_sha256") else None
    return commit[:7] + (" with changes" if provenance.get("code_differs_from_commit") else "")


def provenance_counts(runs: list[Run], field) -> str:
    """How many runs have each value of a provenance field (the agents record it in config.json)."""
    counts: dict[str, int] = {}
    for r in runs:
        value = field(r.config.get("provenance") or {}) or "not recorded"
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{v} ({n})" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def runs_count(n: int, what: str = "run") -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def short_list(items, limit=3) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_labels(runs: list[Run], say) -> None:
    """Warn when runs under one label differ in a flag that changes what they learn."""
    by_label: dict[str, list[Run]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(r)
    for label, group in by_label.items():
        keys = sorted({k for r in group for k in r.config} - BOOKKEEPING)
        differ = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in group}) > 1]
        if differ:
            say(f"the runs of '{label}' differ in {', '.join(differ[:5])}: pass --label-by exp_name,{differ[0]} "
                f"to tell them apart")
        roms: dict[str, set] = {}
        for r in group:
            md5 = (r.config.get("provenance") or {}).get("rom_md5")
            if md5:
                roms.setdefault(r.game, set()).add(md5)
        for game, md5s in sorted(roms.items()):
            if len(md5s) > 1:  # ROMs of one name can be other cartridges (RESULTS.md: BankHeist)
                say(f"the runs of '{label}' on {game} played {len(md5s)} different ROMs (md5 "
                    f"{', '.join(sorted(m[:8] for m in md5s))}): their scores may not be comparable")


def normalisation_rows(runs: list[Run], tables: dict[str, Row] | None, say) -> dict[str, Row | None]:
    """The table row of every game (None for all with --raw); runs of games without scores leave."""
    games = sorted({r.game for r in runs}, key=natural_key)
    if tables is None:
        return {g: None for g in games}
    unknown = [g for g in games if table_key(g) not in tables]
    if unknown:
        raise UserError(f"no normalisation scores for {', '.join(unknown)} in the tables: add them to a table "
                        "(--table FILE, header game,<score of 0>,<score of 1>) or pass --raw to aggregate raw scores")
    rows = {g: tables[table_key(g)] for g in games}
    empty = [g for g in games if rows[g].zero is None or rows[g].one is None]
    if empty:
        row = rows[empty[0]]
        say(f"cannot normalise {', '.join(empty)} (no {row.names[1]} score in {shown(row.source)}): "
            "left out of the aggregates, kept in the per-game table")
        for r in runs:
            if r.game in empty:
                r.reason = "no normalisation score for its game"
    return rows


def common_games(groups: dict[str, dict[str, list[Run]]], say) -> list[str]:
    all_games = sorted({g for by_game in groups.values() for g in by_game}, key=natural_key)
    games = [g for g in all_games if all(g in by_game for by_game in groups.values())]
    dropped = [g for g in all_games if g not in games]
    if dropped:
        lacking = [label for label, by_game in groups.items() if any(g not in by_game for g in dropped)]
        say(f"aggregating over the {len(games)} games every algorithm has; left out {', '.join(dropped)} "
            f"(missing for {short_list(lacking)})")
        for by_game in groups.values():
            for g in dropped:
                for r in by_game.pop(g, []):
                    r.reason = "its game is missing for another algorithm"
    return games


def equalise_runs(groups: dict[str, dict[str, list[Run]]], say) -> dict[str, int]:
    """Keep the lowest seeds, as many runs on every game as the game with fewest has."""
    counts = {}
    for label, by_game in groups.items():
        n = min(len(rs) for rs in by_game.values())
        counts[label] = n
        extra = []
        for game, rs in by_game.items():
            rs.sort(key=lambda r: (natural_key(str(r.seed)), r.path))
            for r in rs[n:]:
                r.reason = f"beyond the {n} lowest seeds that {label} has on every game"
                extra.append(f"{game} seed {r.seed}")
            del rs[n:]
        if extra:
            say(f"'{label}' has unequal runs per game; kept {n} per game (lowest seeds), left out {short_list(extra)}")
    return counts


# ---- statistics ----
def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores), metrics.aggregate_mean(scores),
                     metrics.aggregate_optimality_gap(scores)])


def iqm_per_point(scores: np.ndarray) -> np.ndarray:
    """metrics.aggregate_iqm (scipy's trim_mean cutting 25% each side) of every point of a runs x
    games x points array, in one sort: 6x faster than trim_mean, where curves spend their time."""
    flat = np.sort(scores.reshape(-1, scores.shape[-1]), axis=0)
    cut = int(0.25 * len(flat))
    return flat[cut:len(flat) - cut].mean(axis=0)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """metrics.probability_of_improvement, vectorised: per game the Mann-Whitney U statistic of
    x over y divided by n_x n_y (P(X > Y) + P(X = Y) / 2), averaged over games. scipy's mannwhitneyu
    costs a millisecond a game, 20 s per 1000 bootstrap samples of 20 games."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    equal = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(greater + 0.5 * equal))


def interval_estimate(scores, func, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Point estimate and 95% percentile CI of the stratified bootstrap (runs resampled within
    each game). rliable draws the resamples from numpy's global generator whatever random_state
    it is given, so the seed is set here, per call: an algorithm's CIs do not depend on which
    others are aggregated with it."""
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point, interval = rly.get_interval_estimates({"x": scores}, func, reps=reps)
    return np.asarray(point["x"]), np.asarray(interval["x"])


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's score distribution (the fraction of runs x games scoring above each tau),
    vectorised over tau: np.vectorize made the profiles the slowest part of an aggregate."""
    return (scores.reshape(-1, 1) > taus.reshape(1, -1)).mean(axis=0)


def profile_estimate(scores: np.ndarray, taus: np.ndarray, reps: int, seed: int):
    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profile, interval = rly.create_performance_profile({"x": scores}, taus, custom_profile_func=score_distribution,
                                                           reps=reps)
    return profile["x"], interval["x"]


def profile_thresholds(matrices: dict[str, np.ndarray], raw: bool) -> np.ndarray:
    values = np.concatenate([m.ravel() for m in matrices.values()])
    low = float(values.min()) if raw else 0.0
    high = max(float(np.percentile(values, 97.5)), low + 1e-9 if raw else 1.0)
    return np.linspace(low, high, 101)


def curve_arrays(groups: dict[str, dict[str, list[Run]]], games: list[str], rows: dict, at_frames, say):
    """Per algorithm: (iteration index and frames of each point, runs x games x points array of
    normalised scores, mean training hours at each point), over the points every run has a score
    for; runs are aligned by iteration index."""
    curves = {}
    for label, by_game in groups.items():
        series = {g: [cut_points(r.points, at_frames) for r in by_game[g]] for g in games}
        every = [s for g in games for s in series[g]]
        length = min(len(s) for s in every)
        start = max(next((i for i, p in enumerate(s) if p[2] is not None), len(s)) for s in every)
        if len({len(s) for s in every}) > 1:
            say(f"the runs of '{label}' have {min(map(len, every))} to {max(map(len, every))} iterations; "
                f"its curve stops at {length}")
        if start >= length:
            say(f"no curve for '{label}': no iteration where every run has a score")
            continue
        frames = [p[1] for p in every[0][start:length]]
        if any([p[1] for p in s[start:length]] != frames for s in every):
            say(f"the runs of '{label}' log their iterations at different frames; its curve follows the index")
        runs = len(series[games[0]])
        array = np.array([[[normalise(p[2], rows[g]) for p in series[g][i][start:length]] for g in games]
                          for i in range(runs)])
        hours = [[r.hours[i] for g in games for r in by_game[g][:runs]] for i in range(start, length)]
        mean_hours = [float(np.mean(h)) if None not in h else np.nan for h in hours]
        curves[label] = (list(range(start, length)), frames, array, mean_hours)
    return curves


# ---- outputs ----
def fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.3f}" if abs(x) < 1000 else f"{x:,.0f}"


def with_ci(point: float, ci) -> str:
    return f"{fmt(point)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def write_csv(path: str, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def colours(labels: list[str]) -> dict:
    return dict(zip(labels, sns.color_palette("colorblind", n_colors=max(len(labels), 1))))


def save(fig, path: str) -> None:
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def plot_aggregates(estimates: dict, names: list[str], label: str, path: str, colors: dict) -> None:
    labels = list(estimates)[::-1]  # rliable draws the first at the bottom: the first on top, as in the tables
    points = {a: estimates[a][0] for a in labels}
    intervals = {a: estimates[a][1] for a in labels}
    row_height = max(0.37, 1.2 / len(labels))  # inches per algorithm
    fig, _ = plot_utils.plot_interval_estimates(points, intervals, metric_names=names, algorithms=labels, colors=colors,
                                                xlabel=label, row_height=row_height,
                                                xlabel_y_coordinate=-0.6 / (row_height * len(labels)))  # below the ticks
    save(fig, path)


def plot_curves(curves: dict, estimates: dict, x_axis: str, label: str, path: str, colors: dict) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    most_frames = max(max(frames) for _, frames, _, _ in curves.values())
    scale, unit = (1e6, "millions") if most_frames >= 1e6 else (1e3, "thousands")
    xlabel = {"iteration": "Iteration", "hours": "Time (hours)"}.get(x_axis, f"Number of Frames (in {unit})")
    for alg, (index, frames, _, hours) in curves.items():
        x = {"iteration": np.array(index), "hours": np.array(hours)}.get(x_axis, np.array(frames) / scale)
        point, interval = estimates[alg]
        plot_utils.plot_sample_efficiency_curve(x, {alg: point}, {alg: interval}, algorithms=[alg], colors=colors,
                                                ax=ax, xlabel=xlabel, ylabel=f"IQM {label}",
                                                marker="o" if len(x) <= 30 else "", labelsize="x-large",
                                                ticklabelsize="x-large")
    outside_legend(ax)
    save(fig, path)


def outside_legend(ax) -> None:
    ax.legend(fontsize="large", frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))


def plot_profiles(profiles: dict, taus: np.ndarray, label: str, path: str, colors: dict) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    plot_utils.plot_performance_profiles({a: p for a, (p, _) in profiles.items()}, taus,
                                         performance_profile_cis={a: ci for a, (_, ci) in profiles.items()},
                                         colors=colors, xlabel=rf"{label} ($\tau$)", ax=ax, labelsize="x-large")
    outside_legend(ax)
    save(fig, path)


def plot_improvement(improvements: dict, baseline: str, path: str, colors: dict) -> None:
    pairs = {f"{a}\t{baseline}": p for a, (p, _) in improvements.items()}
    intervals = {f"{a}\t{baseline}": ci for a, (_, ci) in improvements.items()}
    fig, ax = plt.subplots(figsize=(5, 0.6 * len(pairs) + 1.2))
    plot_utils.plot_probability_of_improvement(pairs, intervals, pair_separator="\t", ax=ax,
                                               colors=[colors[a] for a in improvements], xticks=[0, 0.25, 0.5, 0.75, 1])
    ax.set_yticklabels(list(improvements), fontsize="large")
    ax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    save(fig, path)


def plot_sweep(layout: dict, estimates: dict, key: str, label: str, path: str) -> None:
    """Final IQM against a swept flag, 95% CIs as error bars (the paper's figure 1)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    series = sorted({s for s, _ in layout.values()}, key=natural_key)
    series_colors = colours(series)
    for name in series:
        points = sorted((x, *estimates[a]) for a, (s, x) in layout.items() if s == name)
        x = np.array([p[0] for p in points], dtype=float)
        iqm = np.array([p[1][0] for p in points])
        err = np.abs(np.array([p[2][:, 0] for p in points]).T - iqm)
        ax.errorbar(x, iqm, yerr=err, color=series_colors[name], marker="o", capsize=4, linewidth=2, label=name)
    xs = sorted({x for _, x in layout.values()})
    if min(xs) > 0 and max(xs) / min(xs) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [format_value(x) for x in xs])
    plot_utils._annotate_and_decorate_axis(ax, xlabel=key, ylabel=f"IQM {label}", labelsize="x-large")
    if len(series) > 1:
        ax.legend(fontsize="large", frameon=False)
    save(fig, path)


def sweep_layout(args, groups: dict) -> dict:
    """{algorithm: (series, value of the --sweep key)}, checked before any bootstrap."""
    layout = {}
    for label, by_game in groups.items():
        configs = [r.config for rs in by_game.values() for r in rs]
        values = sorted({json.dumps(c.get(args.sweep)) for c in configs})
        if len(values) != 1:
            raise UserError(f"the runs of '{label}' have several values of --sweep {args.sweep} ({', '.join(values)}): "
                            f"pass --label-by exp_name,{args.sweep}")
        x = configs[0].get(args.sweep)
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise UserError(f"--sweep {args.sweep} needs a numeric config key ('{label}' has {x!r})")
        layout[label] = (label_of(configs[0], args.series_by) if args.series_by else "IQM", x)
    points = [(s, x) for s, x in layout.values()]
    if len(set(points)) < len(points):
        raise UserError(f"several algorithms share a series and a value of {args.sweep}: "
                        "name the flags that tell them apart with --series-by")
    return layout


# ---- command line ----
class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (python benchmark/aggregate.py --help)")


def parse_args(argv):
    p = Parser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", metavar="RUNS", help="folders searched recursively for runs")
    p.add_argument("--baseline", help="algorithm: the probability of improvement of every other one over it")
    p.add_argument("--label-by", default="exp_name", help="config keys, comma-separated, naming the algorithms")
    p.add_argument("--at-frames", type=float, help="final score: the last iteration at or before F frames (40e6)")
    p.add_argument("--final-window", type=int, default=1, help="final score: the mean of the last K iterations")
    p.add_argument("--include-unfinished", action="store_true", help="aggregate runs without a final record too")
    p.add_argument("--raw", action="store_true", help="raw scores, no normalisation (for domains without a table)")
    p.add_argument("--table", action="append", help="normalisation table, repeatable (default: the CSV files in "
                   "benchmark/ with header game,<score of 0>,<score of 1>)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000: rliable's default for "
                   "profiles, seconds per algorithm; 50000, its README's for final figures, takes minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--x", choices=("frames", "iteration", "hours"), default="frames",
                   help="x axis of the curves (hours: wall clock of training, mean over the runs; figure 19)")
    p.add_argument("--games", type=lambda text: text.replace(",", " ").split(), default=None,
                   help="only these games, e.g. \"Pong Breakout\" (figure 8's 20-game panel among 60 games)")
    p.add_argument("--sweep", help="numeric config key (e.g. num_experts): sweep.png plots the final IQM against it")
    p.add_argument("--series-by", default="", help="config keys, comma-separated, splitting --sweep in lines")
    p.add_argument("--out", help="output folder (default: RUNS[0]/aggregate)")
    args = p.parse_args(argv)
    args.label_by = [k.strip() for k in args.label_by.split(",") if k.strip()]
    args.series_by = [k.strip() for k in args.series_by.split(",") if k.strip()]
    if not args.label_by:
        raise UserError("--label-by needs at least one config key, e.g. exp_name or moe,num_experts")
    if args.final_window < 1 or args.reps < 1 or (args.at_frames is not None and args.at_frames <= 0):
        raise UserError("--final-window and --reps must be at least 1, and --at-frames positive")
    return args


def main(argv=None) -> int:
    try:
        return aggregate(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def aggregate(args) -> int:
    notes: list[str] = []

    def say(message: str) -> None:
        notes.append(message)
        print(f"warning: {message}", file=sys.stderr)

    sel = select(args, say)
    layout = sweep_layout(args, sel.groups) if args.sweep else None
    res = compute(args, sel, say)
    out = args.out or os.path.join(args.runs[0], "aggregate")
    os.makedirs(out, exist_ok=True)
    label = score_label([sel.rows[g] for g in sel.games])
    write_plots(args, sel, res, layout, label, out)
    report = Report(args, sel, res, label, notes)
    report.write_csvs(out)
    text = report.markdown()
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    print(f"wrote {shown(out)}", file=sys.stderr)
    return 0


@dataclass
class Selection:
    runs: list  # every run found
    usable: list  # finished (or --include-unfinished) runs with a score, repeats left out
    rows: dict  # game -> its normalisation Row (None with --raw)
    groups: dict  # algorithm -> game -> its runs in the aggregates, as many on every game
    games: list  # the games of the aggregates
    counts: dict  # algorithm -> runs per game


def select(args, say) -> Selection:
    runs = [read_run(path) for path in find_run_dirs(args.runs)]
    if not runs:
        raise UserError(f"no runs under {', '.join(args.runs)} (a run is a folder with config.json and summary.jsonl): "
                        "pass the folders given to the agents' --runs-dir")
    for key in args.label_by + args.series_by + ([args.sweep] if args.sweep else []):
        if not any(key in r.config for r in runs):
            raise UserError(f"no run has the config key '{key}'; keys are e.g. {', '.join(list(runs[0].config)[:8])}")
    for r in runs:
        r.label = label_of(r.config, args.label_by)
    if args.games:
        wanted = {table_key(g) for g in args.games}
        for r in runs:
            if not r.reason and table_key(r.game) not in wanted:
                r.reason = "not in --games"
        if all(r.reason for r in runs):
            raise UserError(f"no run is of a game in --games ({short_list(args.games)})")
    select_runs(runs, args, say)
    usable = [r for r in runs if not r.reason]
    if not usable:
        reasons = "; ".join(sorted({r.reason for r in runs}))
        hint = "" if args.include_unfinished else "; --include-unfinished aggregates unfinished runs"
        raise UserError(f"none of the {runs_count(len(runs))} found can be aggregated ({reasons[:300]}){hint}")
    check_labels(usable, say)
    rows = normalisation_rows(usable, None if args.raw else load_tables(args.table or default_tables()), say)
    groups: dict[str, dict[str, list[Run]]] = {}
    for r in sorted(usable, key=lambda r: natural_key(r.label)):
        if not r.reason:
            groups.setdefault(r.label, {}).setdefault(r.game, []).append(r)
    if not groups:
        raise UserError("no run is of a game that can be normalised: pass --raw to aggregate raw scores")
    if args.baseline is not None and args.baseline not in groups:
        raise UserError(f"unknown --baseline '{args.baseline}'; the algorithms are: {', '.join(groups)}")
    games = common_games(groups, say)
    if not games:
        raise UserError("no game is common to all algorithms: aggregate fewer algorithms at once")
    counts = equalise_runs(groups, say)
    single = [a for a, n in counts.items() if n == 1]
    if single:
        say(f"one run per game for {short_list(single)}: the bootstrap resamples runs within each game, so their "
            "intervals have zero width")
    return Selection(runs, usable, rows, groups, games, counts)


@dataclass
class Results:
    names: list  # the metrics
    estimates: dict  # algorithm -> (point estimate per metric, 2 x metrics CI)
    curves: dict  # algorithm -> (iteration indices, frames, runs x games x points normalised scores)
    curve_estimates: dict  # algorithm -> (IQM per point, 2 x points CI)
    taus: np.ndarray
    profiles: dict  # algorithm -> (score distribution over taus, 2 x taus CI)
    improvements: dict  # algorithm -> (P(algorithm > baseline), CI)


def compute(args, sel: Selection, say) -> Results:
    matrices = {a: np.array([[normalise(by_game[g][i].final, sel.rows[g]) for g in sel.games]
                             for i in range(sel.counts[a])]) for a, by_game in sel.groups.items()}
    names = list(METRICS[:3] if args.raw else METRICS)  # an optimality gap needs the score of 1 (human)
    estimates = {}
    for a, scores in matrices.items():
        point, interval = interval_estimate(scores, aggregate_metrics, args.reps, args.seed)
        estimates[a] = (point[:len(names)], interval[:, :len(names)])
    curves = curve_arrays(sel.groups, sel.games, sel.rows, args.at_frames, say)
    curve_estimates = {a: interval_estimate(array, iqm_per_point, args.reps, args.seed)
                       for a, (_, _, array, _) in curves.items()}
    taus = profile_thresholds(matrices, args.raw)
    profiles = {a: profile_estimate(scores, taus, args.reps, args.seed) for a, scores in matrices.items()}
    improvements = {}
    for a, scores in matrices.items():
        if args.baseline is not None and a != args.baseline:
            pair = (scores, matrices[args.baseline])
            point, interval = interval_estimate(pair, probability_of_improvement, args.reps, args.seed)
            improvements[a] = (float(point), interval.ravel())
    return Results(names, estimates, curves, curve_estimates, taus, profiles, improvements)


def write_plots(args, sel: Selection, res: Results, layout: dict | None, label: str, out: str) -> None:
    colors = colours(list(sel.groups))
    plot_aggregates(res.estimates, res.names, label, os.path.join(out, "aggregates.png"), colors)
    if res.curves:
        plot_curves(res.curves, res.curve_estimates, args.x, label, os.path.join(out, "curves.png"), colors)
    plot_profiles(res.profiles, res.taus, label, os.path.join(out, "profiles.png"), colors)
    if res.improvements:
        plot_improvement(res.improvements, args.baseline, os.path.join(out, "improvement.png"), colors)
    if layout:
        plot_sweep(layout, res.estimates, args.sweep, label, os.path.join(out, "sweep.png"))


@dataclass
class Report:
    args: argparse.Namespace
    sel: Selection
    res: Results
    label: str
    notes: list

    def per_game(self) -> list[tuple]:
        """(algorithm, game, raw final scores, normalised ones or None) of every usable run, those
        the aggregates leave out (games not common to all, extra seeds) included."""
        cells: dict[tuple, list[Run]] = {}
        for r in self.sel.usable:
            cells.setdefault((r.label, r.game), []).append(r)
        out = []
        for (alg, game), rs in sorted(cells.items(), key=lambda kv: (natural_key(kv[0][0]), natural_key(kv[0][1]))):
            raw = np.array([r.final for r in rs])
            row = self.sel.rows[game]
            normalisable = row is None or (row.zero is not None and row.one is not None)
            out.append((alg, game, raw, normalise(raw, row) if normalisable else None))
        return out

    def protocol(self) -> str:
        a, games = self.args, self.sel.games
        final = f"the mean of the last {a.final_window} iterations" if a.final_window > 1 else "the last iteration"
        if a.at_frames:
            final += f" at or before {a.at_frames:,.0f} frames"
        if a.raw:
            scores = "raw scores"
        else:
            scores = f"{self.label.lower()} ({', '.join(sorted({shown(self.sel.rows[g].source) for g in games}))})"
        return (f"Scores: {scores}; final score of a run: {final}; 95% stratified-bootstrap CIs ({a.reps} resamples, "
                f"seed {a.seed}); {len(games)} games: {', '.join(games)}.")

    def markdown(self) -> str:
        sel, res = self.sel, self.res
        parts = [f"# Aggregate of {runs_count(sum(sel.counts.values()) * len(sel.games))}", self.protocol(),
                 "## Aggregates",
                 markdown_table(["algorithm", "runs/game", *res.names],
                                [[a, sel.counts[a], *(with_ci(p, ci) for p, ci in zip(point, interval.T))]
                                 for a, (point, interval) in res.estimates.items()])]
        if res.improvements:
            parts += [f"## Probability of improvement over {self.args.baseline}",
                      markdown_table(["algorithm X", f"P(X > {self.args.baseline})"],
                                     [[a, with_ci(p, ci)] for a, (p, ci) in res.improvements.items()])]
        if res.curves:
            last = {a: with_ci(point[-1], interval[:, -1]) for a, (point, interval) in res.curve_estimates.items()}
            parts += ["## Curves (IQM per iteration: curves.csv, curves.png)",
                      markdown_table(["algorithm", "points", "IQM at the last point"],
                                     [[a, len(index), last[a]] for a, (index, _, _, _) in res.curves.items()])]
        parts += ["## Per-game final scores (raw; mean ± std over seeds, runs; every finished run)",
                  self.per_game_table()]
        if not self.args.raw:
            used = [sel.rows[g] for g in sorted({r.game for r in sel.usable}, key=natural_key)]
            parts += ["## Normalisation",
                      markdown_table(["game", *used[0].names, "table"],
                                     [[row.game, fmt_opt(row.zero), fmt_opt(row.one), shown(row.source)]
                                      for row in used])]
        parts += ["## Runs", self.runs_table()]
        excluded = [r for r in sel.runs if r.reason]
        if excluded:
            parts += [f"Left out of the aggregates ({len(excluded)}):",
                      markdown_table(["run", "reason"], [[shown(r.path), r.reason] for r in excluded])]
        if self.notes:
            parts += ["## Warnings", "\n".join(f"- {n}" for n in self.notes)]
        return "\n\n".join(parts) + "\n"

    def per_game_table(self) -> str:
        cells = {(alg, game): raw for alg, game, raw, _ in self.per_game()}
        algs = sorted({a for a, _ in cells}, key=natural_key)
        games = sorted({g for _, g in cells}, key=natural_key)
        return markdown_table(["game", *algs],
                              [[g, *(mean_std(cells[(a, g)]) if (a, g) in cells else "" for a in algs)] for g in games])

    def runs_table(self) -> str:
        rows = []
        for a, by_game in self.sel.groups.items():
            runs = [r for rs in by_game.values() for r in rs]
            seeds = sorted({str(r.seed) for r in runs}, key=natural_key)
            rows.append([a, len(by_game), len(runs), ", ".join(seeds), provenance_counts(runs, commit_of),
                         provenance_counts(runs, lambda p: p.get("device"))])
        return (markdown_table(["algorithm", "games", "runs aggregated", "seeds", "code (git commit)", "device"], rows)
                + f"\n\nEvery run found, with its final score: runs.csv ({runs_count(len(self.sel.runs))}).")

    def write_csvs(self, out: str) -> None:
        sel, res, games = self.sel, self.res, len(self.sel.games)
        rows = [[a, name, p, lo, hi, sel.counts[a], games] for a, (point, interval) in res.estimates.items()
                for name, p, (lo, hi) in zip(res.names, point, interval.T)]
        rows += [[a, f"P(X > {self.args.baseline})", p, lo, hi, sel.counts[a], games]
                 for a, (p, (lo, hi)) in res.improvements.items()]
        write_csv(os.path.join(out, "aggregates.csv"),
                  ["algorithm", "metric", "estimate", "ci_low", "ci_high", "runs_per_game", "games"], rows)
        write_csv(os.path.join(out, "per_game.csv"),
                  ["algorithm", "game", "runs", "mean", "std", "normalized_mean", "normalized_std"],
                  [[a, g, len(raw), raw.mean(), std(raw), *(["", ""] if norm is None else [norm.mean(), std(norm)])]
                   for a, g, raw, norm in self.per_game()])
        rows = []
        for a, (index, frames, _, hours) in res.curves.items():
            point, (lo, hi) = res.curve_estimates[a]
            rows += [[a, *values, sel.counts[a], games] for values in zip(index, frames, hours, point, lo, hi)]
        write_csv(os.path.join(out, "curves.csv"),
                  ["algorithm", "iteration", "frames", "hours", "iqm", "ci_low", "ci_high", "runs_per_game", "games"],
                  rows)
        write_csv(os.path.join(out, "runs.csv"),
                  ["run", "algorithm", "game", "seed", "finished", "final_score", "included", "reason", "git_commit",
                   "code_differs_from_commit", "code_sha256", "device", "rom_md5"],
                  [[r.path, r.label, r.game, r.seed, r.finished, "" if r.final is None else r.final, not r.reason,
                    r.reason, *((r.config.get("provenance") or {}).get(k, "") for k in
                                ("git_commit", "code_differs_from_commit", "code_sha256", "device", "rom_md5"))]
                   for r in sel.runs])


def std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def mean_std(values: np.ndarray) -> str:
    return f"{values.mean():.1f} ± {std(values):.1f} ({len(values)})"


def fmt_opt(x) -> str:
    return "" if x is None else f"{x:g}"


if __name__ == "__main__":
    sys.exit(main())
