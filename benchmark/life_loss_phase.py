"""How much Dopamine's cut frame skip at a lost life moves a game's frame phase (RESULTS.md, "The
published agent's setting: seed 3").

With `terminal_on_life_loss` (every Atari 100k config), Dopamine's `AtariPreprocessing.step` stops
its four-frame loop at the frame where a life is lost: that agent step plays k = 1..4 frames, and
every later step starts 4 - k frames earlier in the game's frame cycle than four-frame steps would.
Our agents play four frames at every step unless `--life-loss-frame-skip cut` (or `cut_2021`).
This plays random actions under that rule (the agents' `make_env` with `cut_2021`) and counts, per
game: lives lost per episode, how many frames the life-losing steps played, and the share of agent
steps taken at another phase (frames since the start, mod 4) than the start's, which is 0 with the
default frame skip by construction.

    python benchmark/life_loss_phase.py --episodes 3 --out benchmark/results/life_loss_phase.json
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import drq_moe_atari100k as drq  # noqa: E402

GAMES_26 = ("Alien Amidar Assault Asterix BankHeist BattleZone Boxing Breakout ChopperCommand CrazyClimber DemonAttack "
            "Freeway Frostbite Gopher Hero Jamesbond Kangaroo Krull KungFuMaster MsPacman Pong PrivateEye Qbert "
            "RoadRunner Seaquest UpNDown").split()


def play_episode(env, rng: np.random.Generator) -> dict:
    """One episode of random actions, one per agent step, under Dopamine's rule (`make_env`'s
    frame skip cut at a lost life)."""
    env.reset(seed=int(rng.integers(2**31)))
    ale = env.unwrapped.ale
    lives, steps, shifted, cut, over = ale.lives(), 0, 0, [], False
    while not over:
        start = ale.getEpisodeFrameNumber()
        shifted += start % 4 != 0
        steps += 1
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        over = terminated or truncated
        if ale.lives() < lives and not over:
            cut.append(ale.getEpisodeFrameNumber() - start)
        lives = ale.lives()
    return {"frames": ale.getEpisodeFrameNumber(), "steps": steps, "shifted_steps": shifted, "life_loss_frames": cut}


def measure(game: str, episodes: int, max_frames: int, seed: int) -> dict:
    env = drq.make_env(drq.resolve_env_id(game), seed, False, max_frames, None, "cut_2021")
    rng = np.random.default_rng(seed)
    runs = [play_episode(env, rng) for _ in range(episodes)]
    env.close()
    cut = [k for r in runs for k in r["life_loss_frames"]]
    steps = sum(r["steps"] for r in runs)
    return {"game": game, "episodes": episodes, "agent_steps": steps,
            "lives_lost_per_episode": len(cut) / episodes,
            "life_loss_steps_by_frames_played": {str(k): cut.count(k) for k in range(1, 5)},
            "share_of_life_loss_steps_cut_short": (sum(k < 4 for k in cut) / len(cut)) if cut else 0.0,
            "share_of_steps_at_another_phase": sum(r["shifted_steps"] for r in runs) / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", default=",".join(GAMES_26), help="comma-separated games")
    p.add_argument("--episodes", type=int, default=3, help="random-play episodes per game")
    p.add_argument("--max-frames", type=int, default=108_000, help="emulator frames per episode at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmark/results/life_loss_phase.json")
    opts = p.parse_args()
    if opts.episodes < 1 or opts.max_frames < 4:
        sys.exit("error: --episodes takes a positive count and --max-frames at least 4")
    rows = [measure(g, opts.episodes, opts.max_frames, opts.seed) for g in opts.games.split(",")]
    print("| game | lives lost per episode | life-losing steps that played 1 / 2 / 3 / 4 frames | "
          "steps at another phase than the start's |\n|---|---|---|---|")
    for r in rows:
        by_k = r["life_loss_steps_by_frames_played"]
        print(f"| {r['game']} | {r['lives_lost_per_episode']:.1f} | {' / '.join(str(by_k[str(k)]) for k in range(1, 5))} | "
              f"{r['share_of_steps_at_another_phase']:.0%} |")
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump({"episodes": opts.episodes, "max_frames": opts.max_frames, "seed": opts.seed, "policy": "random",
                   "rows": rows}, f, indent=1)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
