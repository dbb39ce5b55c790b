"""Does a game draw its objects on some frames only (flicker)? If so, the phase of the 4-frame skip
relative to the game's own frame counter decides what the agent sees, and no-op starts in agent
steps (multiples of 4 frames: every episode in one phase) could differ from no-op starts in single
frames (RESULTS.md, "Which half of the 2021 code moves Asterix").

    python benchmark/flicker_check.py --game Asterix --frames 4000 --out /tmp/flicker.json

It plays random actions, each held 4 frames, at frame skip 1 (no sticky actions), until the game
ends or --frames frames. A pixel is foreground where it differs from that pixel's median over
the episode by more than --threshold gray levels. For each horizontal band of the screen and each
period P in --periods, it averages the band's foreground count over the frames of each phase
t mod P. The flicker index of a band is the spread of those phase means (largest minus smallest)
over their mean: 0 for a screen that draws everything on every frame, up to 2 for objects drawn
on one phase only. It prints the largest index of each period and writes every band's means."""

from __future__ import annotations

import argparse
import json

import numpy as np


def foreground(frames: np.ndarray, threshold: float) -> np.ndarray:
    """(T, H, W) bool: where each frame differs from the per-pixel median over all frames."""
    background = np.median(frames, axis=0)
    return np.abs(frames.astype(np.int16) - background) > threshold


def phase_means(counts: np.ndarray, period: int) -> np.ndarray:
    """Mean of a (T,) series over the steps of each phase t mod period (whole periods only)."""
    whole = len(counts) - len(counts) % period
    return counts[:whole].reshape(-1, period).mean(axis=0)


def flicker_index(means: np.ndarray) -> float:
    return float((means.max() - means.min()) / max(means.mean(), 1e-9))


def band_report(mask: np.ndarray, periods: list[int], bands: int) -> list[dict]:
    rows = []
    for rows_of_band in np.array_split(np.arange(mask.shape[1]), bands):
        counts = mask[:, rows_of_band].sum(axis=(1, 2)).astype(np.float64)
        means = {p: phase_means(counts, p) for p in periods}
        rows.append({"rows": [int(rows_of_band[0]), int(rows_of_band[-1])], "mean_foreground": float(counts.mean()),
                     "phase_means": {str(p): m.round(3).tolist() for p, m in means.items()},
                     "flicker_index": {str(p): flicker_index(m) for p, m in means.items()}})
    return rows


def play(game: str, frames: int, seed: int) -> np.ndarray:
    import ale_py
    import gymnasium as gym
    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, obs_type="grayscale")
    obs, _ = env.reset(seed=seed)
    rng, seen, action = np.random.default_rng(seed), [obs], 0
    for t in range(frames - 1):
        if t % 4 == 0:
            action = int(rng.integers(env.action_space.n))
        obs, _, terminated, truncated, _ = env.step(action)
        seen.append(obs)
        if terminated or truncated:
            break
    env.close()
    return np.stack(seen)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Asterix")
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--periods", type=int, nargs="+", default=[2, 3, 4, 8])
    parser.add_argument("--bands", type=int, default=8, help="horizontal bands of the screen")
    parser.add_argument("--threshold", type=float, default=10.0, help="gray levels from the median that count as foreground")
    parser.add_argument("--out", help="JSON file of every band's phase means")
    args = parser.parse_args(argv)
    frames = play(args.game, args.frames, args.seed)
    report = band_report(foreground(frames, args.threshold), args.periods, args.bands)
    print(f"{args.game}: {len(frames)} frames, {args.bands} bands")
    for p in args.periods:
        worst = max(report, key=lambda r: r["flicker_index"][str(p)])
        print(f"  period {p}: largest flicker index {worst['flicker_index'][str(p)]:.3f} "
              f"(rows {worst['rows'][0]}-{worst['rows'][1]}, phase means {worst['phase_means'][str(p)]})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"game": args.game, "frames": len(frames), "seed": args.seed, "threshold": args.threshold,
                       "bands": report}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
