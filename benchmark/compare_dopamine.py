"""Our learning curves against Dopamine's published baselines, game by game: the mean training
return per iteration of our runs (mean and spread over seeds) next to the curves Dopamine ships
for its agents (5 seeds, 200 iterations of 1M frames, sticky actions: the same protocol).

    git clone --depth 1 https://github.com/google/dopamine /tmp/dopamine
    python benchmark/compare_dopamine.py runs/sweeps/fig1/dqn_none_x1__* \\
        --dopamine-data /tmp/dopamine/baselines/atari/data --encoder Impala --agents DQN

Dopamine's data are one JSON file per game and encoder (`pong_Impala.json`, `pong_CNN.json`, and
`pong.json` for its first TensorFlow agents): records {"Iteration", "Value", "Agent"}, one per seed
and iteration, where Value is the iteration's mean training return. Its JAX agents are DQN (Adam,
MSE: as dqn_moe_atari.py), C51, Rainbow (Dopamine's: C51 + prioritised replay + 3-step returns,
without noisy nets, dueling or double DQN; `rainbow_moe_atari.py --no-noisy --no-dueling
--no-double` is that agent), IQN and QR-DQN.

Writes to --out (default RUNS[0]/dopamine): compare.png (one panel per game), compare.csv and
compare.md (at every game's last common iteration: our mean and standard deviation over seeds,
Dopamine's, and where ours lies among Dopamine's seeds)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import UserError, find_run_dirs, label_of, read_run  # noqa: E402

FRAMES_PER_ITERATION = 1_000_000  # Dopamine's 250k agent steps


def dopamine_file(data_dir: str, game: str, encoder: str) -> str:
    name = game.lower() + ("" if encoder == "legacy" else f"_{encoder}") + ".json"
    return os.path.join(data_dir, name)


def dopamine_curves(path: str, agents: list[str]) -> dict[str, dict[int, list[float]]]:
    """agent -> iteration -> the values of its seeds."""
    if not os.path.isfile(path):
        raise UserError(f"no Dopamine data at {path}: --dopamine-data is the baselines/atari/data folder of a "
                        "Dopamine clone, and the game must be one Dopamine ran")
    with open(path) as f:
        records = json.load(f)
    curves: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if r["Agent"] in agents and isinstance(r.get("Value"), (int, float)):
            curves.setdefault(r["Agent"], {}).setdefault(int(r["Iteration"]), []).append(float(r["Value"]))
    missing = [a for a in agents if a not in curves]
    if missing:
        known = sorted({r["Agent"] for r in records})
        raise UserError(f"{os.path.basename(path)} has no agent {', '.join(missing)}; it has {', '.join(known)}")
    return curves


def our_curves(runs) -> dict[str, dict[str, dict[int, list[float]]]]:
    """label -> game -> iteration (Dopamine's numbering, by frames) -> the values of our seeds."""
    curves: dict = {}
    for run in runs:
        # with --num-envs K an iteration ends at the first agent step past its boundary: up to K - 1
        # steps (4 frames each) late
        overshoot = 4 * max(int(run.config.get("num_envs", 1)), 1)
        for _, frames, score in run.points:
            if score is not None and frames >= FRAMES_PER_ITERATION and frames % FRAMES_PER_ITERATION < overshoot:
                iteration = frames // FRAMES_PER_ITERATION - 1
                curves.setdefault(run.label, {}).setdefault(run.game, {}).setdefault(iteration, []).append(score)
    return curves


def rank_among(value: float, values: list[float]) -> str:
    """Where our mean lies among Dopamine's seeds: below all, between (k of n above it), above all."""
    below = sum(v < value for v in values)
    return "below all" if below == 0 else "above all" if below == len(values) else f"{below} of {len(values)} below"


def compare(ours: dict, theirs: dict) -> list[list]:
    rows = []
    for label, by_game in ours.items():
        for game, by_iteration in sorted(by_game.items()):
            for agent, curve in theirs[game].items():
                common = sorted(set(by_iteration) & set(curve))
                if not common:
                    continue
                last = common[-1]
                mine, ref = np.array(by_iteration[last]), np.array(curve[last])
                rows.append([game, label, agent, last, (last + 1) * FRAMES_PER_ITERATION, len(mine), mine.mean(),
                             mine.std(ddof=1) if len(mine) > 1 else 0.0, len(ref), ref.mean(), ref.std(ddof=1),
                             rank_among(mine.mean(), list(ref))])
    return rows


HEADER = ["game", "ours", "dopamine", "iteration", "frames", "our_seeds", "our_mean", "our_std",
          "dopamine_seeds", "dopamine_mean", "dopamine_std", "our_mean_among_dopamine_seeds"]


def plot(ours: dict, theirs: dict, games: list[str], path: str, full: bool) -> None:
    cols = min(4, len(games))
    rows = math.ceil(len(games) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, game in zip(axes.flat, games):
        last = max(max(by_game[game]) for by_game in ours.values() if game in by_game)  # our last iteration
        for i, (agent, curve) in enumerate(sorted(theirs[game].items())):
            x = np.array([k for k in sorted(curve) if full or k <= last])
            values = [np.array(curve[k]) for k in x]
            mean = np.array([v.mean() for v in values])
            ax.plot(x + 1, mean, "--", color=colors(i), label=f"Dopamine {agent}")
            ax.fill_between(x + 1, [v.min() for v in values], [v.max() for v in values], color=colors(i), alpha=0.15)
        for j, label in enumerate(sorted(ours)):
            curve = ours[label].get(game)
            if not curve:
                continue
            x = np.array(sorted(curve))
            values = [np.array(curve[k]) for k in x]
            color = colors(len(theirs[game]) + j)
            ax.plot(x + 1, [v.mean() for v in values], "-", color=color, label=label)
            ax.fill_between(x + 1, [v.min() for v in values], [v.max() for v in values], color=color, alpha=0.2)
        ax.set_title(game)
        ax.set_xlabel("Frames (millions)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(games):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("Training return")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown(rows: list[list]) -> str:
    lines = ["| game | ours | Dopamine | frames | ours: mean ± std (seeds) | Dopamine: mean ± std (seeds) | "
             "our mean among Dopamine's seeds |", "|---|---|---|---|---|---|---|"]
    for game, label, agent, _, frames, n, mean, std, m, ref_mean, ref_std, rank in rows:
        lines.append(f"| {game} | {label} | {agent} | {frames / 1e6:.0f}M | {mean:.1f} ± {std:.1f} ({n}) | "
                     f"{ref_mean:.1f} ± {ref_std:.1f} ({m}) | {rank} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("runs", nargs="+", metavar="RUNS", help="folders searched recursively for runs")
    p.add_argument("--dopamine-data", required=True, help="baselines/atari/data of a Dopamine clone")
    p.add_argument("--encoder", choices=("Impala", "CNN", "legacy"), default="Impala",
                   help="Dopamine's runs with this network (legacy: its first TensorFlow runs, Nature CNN)")
    p.add_argument("--agents", default="DQN", help="Dopamine agents, comma-separated: DQN, C51, Rainbow, IQN, QR-DQN")
    p.add_argument("--label-by", default="exp_name", help="config keys naming our algorithms")
    p.add_argument("--full", action="store_true", help="plot Dopamine's whole 200 iterations, not only as far as ours")
    p.add_argument("--out", help="output folder (default: RUNS[0]/dopamine)")
    args = p.parse_args(argv)
    args.agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    args.label_by = [k.strip() for k in args.label_by.split(",") if k.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = [read_run(p) for p in find_run_dirs(args.runs)]
        runs = [r for r in runs if not r.reason]
        if not runs:
            raise UserError(f"no runs under {', '.join(args.runs)}")
        for r in runs:
            r.label = label_of(r.config, args.label_by)
        ours = our_curves(runs)
        if not ours:
            raise UserError("no run has an iteration of 1M frames with a score: Dopamine's iterations are 1M frames "
                            "(the agents' default --iteration-steps 250000)")
        games = sorted({g for by_game in ours.values() for g in by_game})
        theirs = {g: dopamine_curves(dopamine_file(args.dopamine_data, g, args.encoder), args.agents) for g in games}
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.runs[0], "dopamine")
    os.makedirs(out, exist_ok=True)
    rows = compare(ours, theirs)
    plot(ours, theirs, games, os.path.join(out, "compare.png"), args.full)
    with open(os.path.join(out, "compare.csv"), "w") as f:
        f.write(",".join(HEADER) + "\n")
        f.writelines(",".join(str(v) for v in row) + "\n" for row in rows)
    text = (f"# Against Dopamine's {args.encoder} baselines ({', '.join(args.agents)})\n\n"
            "Training returns at the last iteration both have; 'among Dopamine's seeds' places our mean "
            "among the values of its seeds.\n\n" + markdown(rows))
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
