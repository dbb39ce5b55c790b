"""Does the frame skip cut at a lost life change a game's score by itself? Random play under the
agents' frame skips (`--life-loss-frame-skip`; RESULTS.md, "The frame skip cut at a lost life").

Episode i of a game starts from the same emulator seed and plays the same stream of random actions
(one per agent step, drawn from (seed, i)) under every frame skip, through `make_env` of
drq_moe_atari100k.py. A game that loses no life plays the same episodes under all of them. Per
game and frame skip: the mean return and length of the episodes, and against `full`, a
two-sided Wilcoxon signed-rank test of the episodes' returns, paired by episode.

    python benchmark/cut_random_play.py --games Asterix,Assault,DemonAttack --episodes 100 \\
        --out benchmark/results/cut_random_play.json
"""

import argparse
import json
import multiprocessing
import os
import sys

import numpy as np
import scipy.stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import drq_moe_atari100k as drq  # noqa: E402


def random_episodes(game: str, life_loss: str, episodes: int, seed: int, max_frames: int) -> dict:
    """`episodes` episodes of random play under one frame skip: their returns and lengths."""
    env = drq.make_env(drq.resolve_env_id(game), seed, False, max_frames, None, life_loss)
    returns, lengths = [], []
    for episode in range(episodes):
        rng = np.random.default_rng([seed, episode])
        env.reset(seed=int(rng.integers(2**31)))
        total, length, over = 0.0, 0, False
        while not over:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            total, length, over = total + reward, length + 1, terminated or truncated
        returns.append(total)
        lengths.append(length)
    env.close()
    return {"game": game, "life_loss_frame_skip": life_loss, "returns": returns, "lengths": lengths}


def summarise(runs: list[dict]) -> list[dict]:
    """A row per game and frame skip, with the test against the same game's `full` episodes."""
    full = {r["game"]: r for r in runs if r["life_loss_frame_skip"] == "full"}
    rows = []
    for r in runs:
        row = {"game": r["game"], "life_loss_frame_skip": r["life_loss_frame_skip"], "episodes": len(r["returns"]),
               "mean_return": float(np.mean(r["returns"])), "mean_length": float(np.mean(r["lengths"]))}
        base = full.get(r["game"])
        if base is not None and r is not base:
            differences = np.array(r["returns"]) - np.array(base["returns"])
            row["episodes_that_differ"] = int(np.count_nonzero(differences))
            row["p_against_full"] = (float(scipy.stats.wilcoxon(differences).pvalue) if differences.any() else 1.0)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", default="Asterix,Assault,DemonAttack", help="comma-separated games")
    p.add_argument("--modes", default="full,cut,cut_2021", help="frame skips (--life-loss-frame-skip), full first")
    p.add_argument("--episodes", type=int, default=100, help="random-play episodes per game and frame skip")
    p.add_argument("--max-frames", type=int, default=108_000, help="emulator frames per episode at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)), help="games and frame skips at once")
    p.add_argument("--out", default="benchmark/results/cut_random_play.json")
    opts = p.parse_args()
    modes = opts.modes.split(",")
    if opts.episodes < 1 or opts.max_frames < 4 or opts.processes < 1:
        sys.exit("error: --episodes and --processes take a positive count and --max-frames at least 4")
    if modes[0] != "full" or not set(modes) <= {"full", "cut", "cut_2021"}:
        sys.exit(f"error: --modes lists full first, then cut and/or cut_2021 (got {opts.modes})")
    jobs = [(g, m, opts.episodes, opts.seed, opts.max_frames) for g in opts.games.split(",") for m in modes]
    with multiprocessing.get_context("spawn").Pool(min(opts.processes, len(jobs))) as pool:
        runs = pool.starmap(random_episodes, jobs)
    rows = summarise(runs)
    print("| game | frame skip | episodes | mean return | mean length | episodes that differ from full | p (Wilcoxon, paired) |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        test = (f"{r['episodes_that_differ']} | {r['p_against_full']:.3g}" if "p_against_full" in r else " | ")
        print(f"| {r['game']} | {r['life_loss_frame_skip']} | {r['episodes']} | {r['mean_return']:,.1f} | "
              f"{r['mean_length']:,.0f} | {test} |")
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump({"episodes": opts.episodes, "max_frames": opts.max_frames, "seed": opts.seed, "policy": "random",
                   "rows": rows, "runs": runs}, f, indent=1)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
