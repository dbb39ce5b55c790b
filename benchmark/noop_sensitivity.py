"""A trained Atari 100k network's return as a function of its episodes' start delay (issue 8).

The evaluation protocols differ only in how each episode starts. The current runner waits 0-29
NOOP agent steps (0, 4, ..., 116 emulator frames). The 2021 runner waits 0-29 single frames. On
Asterix the same network scores 509 under the first and 793 under the second (RESULTS.md, "The
Asterix 2 x 2"). This script plays a saved network (`--save-model`'s model.pt, or a checkpoint.pt)
from each start delay of `--delays` frames. Without sticky actions, the emulator is deterministic
and so is a greedy policy, so each delay's episode is one trajectory, perturbed only by the
evaluation's epsilon. Each protocol's score is then the mean over its 30 delays.

Each episode: reset, `d` raw NOOP emulator frames (their rewards not counted, as in the agents'
evaluations), then the screen at that frame, resized like the agents' preprocessing, as the only
frame of a fresh stack, then the agent's actions with epsilon `--epsilon` (the run's
--eval-epsilon unless given) until the game ends. Delay 4k is the current runner's start after k
no-op steps, up to the max over the last two frames that its observation takes. Delay d < 30 is
the 2021 runner's start after d frames.

    python benchmark/noop_sensitivity.py --model runs/.../model.pt --out noop_sensitivity.json
    python benchmark/noop_sensitivity.py --random Asterix --max-steps 100 --out asterix.json   # no network
    python benchmark/noop_sensitivity.py --summarize *.json     # a table of the runners' scores, one row per file
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

AGENTS = {"drq": "drq_moe_atari100k", "der": "der_moe_atari100k"}


def load_network(agent, path: str):
    """The saved network, rebuilt from its run's flags, in evaluation mode on the CPU."""
    saved = agent.load_checkpoint(path)
    if "q_net" not in saved or "args" not in saved:
        raise SystemExit(f"error: {path} holds no network: pass a run's model.pt (--save-model) or checkpoint.pt")
    fields = {f.name for f in dataclasses.fields(agent.Args)}
    args = agent.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["args"].items() if k in fields})
    env_id = agent.resolve_env_id(args.env_id)
    env = agent.make_env(env_id, 0, False, args.max_episode_frames)
    q_net = agent.RainbowNetwork(args, int(env.action_space.n))
    env.close()
    q_net.load_state_dict(saved["q_net"])
    if hasattr(agent, "set_eval_noise"):
        agent.set_eval_noise(q_net, args.eval_expert_noise)
    return q_net.eval(), args, env_id


def delayed_start(env, seed: int, delay: int) -> np.ndarray:
    """Reset, then `delay` raw NOOP frames; the screen at that frame as the agent sees it (84 x 84
    grayscale, resized as gymnasium's AtariPreprocessing does)."""
    env.reset(seed=seed)
    ale = env.unwrapped.ale
    for _ in range(delay):
        ale.act(0)  # NOOP
    return cv2.resize(ale.getScreenGrayscale(), (84, 84), interpolation=cv2.INTER_AREA)


def play(q_net, envs: list, seeds: list[int], delays: list[int], epsilon: float, terminal_on_life_loss: bool,
         rng: np.random.Generator, early_steps: int = 25,
         max_steps: int = 0) -> tuple[list[float], list[int], list[float]]:
    """One episode per environment, stepped together: environment i starts after `delays[i]` frames
    and ends with its game, or after `max_steps` agent steps where that is above 0. Returns each
    episode's return, its length in agent steps, and its return over the first `early_steps`
    agent steps."""
    n = len(envs)
    stacks = np.zeros((n, 4, 84, 84), dtype=np.uint8)
    greedy = np.zeros(n, dtype=np.int64)  # q_net None: no network, every action random (epsilon 1)
    for i, env in enumerate(envs):
        stacks[i, -1] = delayed_start(env, seeds[i], delays[i])
    lives = np.array([env.unwrapped.ale.lives() for env in envs])
    returns, lengths, done = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    early = np.zeros(n)
    num_actions = int(envs[0].action_space.n)
    while not done.all():
        if q_net is not None:
            with torch.no_grad():
                greedy = q_net(torch.from_numpy(stacks))[0].argmax(dim=1).numpy()
        random_actions = rng.integers(num_actions, size=n)
        actions = np.where(rng.random(n) < epsilon, random_actions, greedy)
        for i in np.flatnonzero(~done):
            screen, reward, terminated, truncated, info = envs[i].step(int(actions[i]))
            returns[i] += reward
            early[i] += reward if lengths[i] < early_steps else 0.0
            lengths[i] += 1
            stacks[i, :-1] = stacks[i, 1:]
            stacks[i, -1] = screen
            if terminal_on_life_loss and info["lives"] < lives[i]:
                stacks[i, :-1] = 0
            lives[i] = info["lives"]
            done[i] = terminated or truncated or lengths[i] == max_steps
    return returns.tolist(), lengths.tolist(), early.tolist()


def protocol_means(by_delay: dict[int, list[float]]) -> dict:
    """The two runners' scores as means over their 30 start delays, where all were played, with
    the standard error of each over its episodes (equal numbers per delay)."""
    means = {d: float(np.mean(r)) for d, r in by_delay.items()}
    out = {}
    for name, delays in (("frames_0_29", range(30)), ("steps_0_29", range(0, 120, 4))):
        if all(d in means for d in delays):
            out[name] = float(np.mean([means[d] for d in delays]))
            pooled = np.concatenate([by_delay[d] for d in delays])
            out[f"{name}_se"] = float(pooled.std(ddof=1) / np.sqrt(len(pooled))) if len(pooled) > 1 else float("nan")
    for phase in range(4):
        phase_delays = [d for d in means if d % 4 == phase]
        if phase_delays:
            out[f"phase_{phase}"] = float(np.mean([means[d] for d in phase_delays]))
    return out


def summary_table(reports: list[dict]) -> str:
    """A Markdown row per report: the two runners' scores (means over their delays, +- standard
    error) and their difference, where the report played both runners' delays."""
    rows = ["| game | network | steps per episode | 2021 runner (0-29 frames) | current runner (0-29 steps) | "
            "current - 2021 |", "|---|---|---|---|---|---|"]
    for r in reports:
        m = r["summary"]
        if "frames_0_29" not in m or "steps_0_29" not in m:
            continue
        diff, se = m["steps_0_29"] - m["frames_0_29"], np.hypot(m["frames_0_29_se"], m["steps_0_29_se"])
        rows.append(f"| {r['env_id']} | {r['model']} | {r.get('max_steps') or 'whole episode'} | "
                    f"{m['frames_0_29']:.1f} +- {m['frames_0_29_se']:.1f} | {m['steps_0_29']:.1f} +- "
                    f"{m['steps_0_29_se']:.1f} | {diff:+.1f} ({f'{diff / se:+.1f} se' if se > 0 else 'no spread'}) |")
    return "\n".join(rows)


def plot(reports: list[dict], labels: list[str], path: str) -> None:
    """Each report's mean return by start delay, with the two runners' ranges of delays marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    for report, label in zip(reports, labels):
        delays = sorted(int(d) for d in report["returns_by_delay"])
        means = [np.mean(report["returns_by_delay"][str(d)]) for d in delays]
        ax.plot(delays, means, marker="o", markersize=2.5, linewidth=0.8, label=label)
    ax.axvspan(0, 29, color="tab:green", alpha=0.08, label="2021 runner: 0-29 frames")
    ax.axvline(116, color="gray", linestyle=":", label="current runner: 0, 4, ..., 116 frames")
    ax.set_xlabel("start delay (NOOP emulator frames before the agent acts)")
    ax.set_ylabel("episode return")
    ax.set_title(reports[0]["env_id"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a run's model.pt (--save-model) or checkpoint.pt")
    source.add_argument("--random", metavar="GAME", help="no network: uniformly random actions in this game")
    source.add_argument("--summarize", nargs="+", metavar="JSON",
                        help="no play: a table of the runners' scores from earlier --out files")
    parser.add_argument("--agent", choices=sorted(AGENTS), default="drq", help="the agent file that trained it")
    parser.add_argument("--delays", type=int, nargs="+", default=list(range(120)),
                        help="start delays in emulator frames (default 0-119: both runners' starts)")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per delay (the emulator seeds differ)")
    parser.add_argument("--epsilon", type=float, default=None, help="default: the run's --eval-epsilon")
    parser.add_argument("--early-steps", type=int, default=25,
                        help="also record each episode's return over its first this many agent steps")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="end each episode after this many agent steps (0: when its game ends)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="JSON file of the returns by delay and the summary")
    parser.add_argument("--plot", default=None, help="PNG file: the returns by delay (with --summarize: of its files)")
    parser.add_argument("--also", nargs="+", default=[], metavar="JSON",
                        help="earlier --out files drawn in the same --plot")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="the curves' names in the plot: this run's, then --also's")
    opts = parser.parse_args(argv)
    if opts.summarize:
        if opts.also or (opts.labels and len(opts.labels) != len(opts.summarize)):
            raise SystemExit(f"error: with --summarize, --plot draws its files: --labels takes one name per file "
                             f"({len(opts.summarize)} here) and --also none")
        reports = [json.load(open(path)) for path in opts.summarize]
        print(summary_table(reports))
        if opts.plot:
            plot(reports, opts.labels or [r["model"] for r in reports], opts.plot)
        return 0
    if min(opts.delays) < 0 or opts.episodes < 1 or opts.max_steps < 0:
        raise SystemExit("error: --delays and --max-steps must be at least 0 and --episodes at least 1")
    if opts.labels and len(opts.labels) != 1 + len(opts.also):
        raise SystemExit(f"error: --labels takes one name per curve: {1 + len(opts.also)} here (this run and --also's)")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    agent = importlib.import_module(AGENTS[opts.agent])
    if opts.model:
        q_net, args, env_id = load_network(agent, opts.model)
        epsilon = args.eval_epsilon if opts.epsilon is None else opts.epsilon
    else:
        args = agent.Args(env_id=opts.random)
        q_net, env_id, epsilon = None, agent.resolve_env_id(opts.random), 1.0
    delays = [d for d in opts.delays for _ in range(opts.episodes)]
    seeds = [opts.seed * 100_003 + i for i in range(len(delays))]
    envs = [agent.make_env(env_id, s, False, args.max_episode_frames) for s in seeds]
    returns, lengths, early = play(q_net, envs, seeds, delays, epsilon, args.terminal_on_life_loss,
                                   np.random.default_rng(opts.seed), opts.early_steps, opts.max_steps)
    for env in envs:
        env.close()
    by_delay: dict[int, list[float]] = {}
    early_by_delay: dict[int, list[float]] = {}
    for d, r, e in zip(delays, returns, early):
        by_delay.setdefault(d, []).append(r)
        early_by_delay.setdefault(d, []).append(e)
    summary = protocol_means(by_delay)
    print(f"{env_id}, {opts.model or 'random actions'}: epsilon {epsilon}, {opts.episodes} episode(s) per delay"
          + (f", at most {opts.max_steps} agent steps each" if opts.max_steps else ""))
    print(f"| start delay (frames) | mean return | returns | mean return of the first {opts.early_steps} agent steps |")
    print("|---|---|---|---|")
    for d in sorted(by_delay):
        print(f"| {d} | {np.mean(by_delay[d]):.1f} | {', '.join(f'{r:.0f}' for r in by_delay[d])} | "
              f"{np.mean(early_by_delay[d]):.1f} |")
    for name, value in summary.items():
        print(f"{name}: {value:.1f}")
    report = {"model": opts.model or "random actions", "env_id": env_id, "epsilon": epsilon, "seed": opts.seed,
              "max_steps": opts.max_steps,
              "returns_by_delay": {str(d): r for d, r in sorted(by_delay.items())},
              "early_steps": opts.early_steps,
              "early_returns_by_delay": {str(d): r for d, r in sorted(early_by_delay.items())},
              "lengths": lengths, "delays": delays, "summary": summary}
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(report, f, indent=1)
    if opts.plot:
        reports = [report] + [json.load(open(path)) for path in opts.also]
        labels = opts.labels or [r["model"] for r in reports]
        plot(reports, labels, opts.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
