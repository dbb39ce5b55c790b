"""Do atari-py (ALE 0.6) and ale-py (ALE 0.12) emulate the same game, frame by frame?

The published Atari 100k runs of DrQ(eps) (Dopamine, 2021) stepped atari-py 0.2.x, whose
emulator is ALE 0.6; our agents step ale-py 0.12. This drives one `ALEInterface` of each with the
same ROM bytes and identical settings (repeat_action_probability 0, frame_skip 1, the same
random_seed, the default mode and difficulty, no episode frame limit), compares the minimal action
sets, the state right after loadROM and after reset_game (screen, RAM, frame counters), then plays
one fixed pseudo-random action sequence (numpy's default_rng(seed) over the minimal action set,
each action held `--hold` frames) for `--frames` frames, calling reset_game on game_over. At every
frame it compares the reward of act(), lives(), game_over(), the grayscale screen and the RAM, and
reports the first frame where anything differs, how many frames differ in each, and per-emulator
totals (reward, life losses, episode lengths).

atari-py is not installable from a wheel on Python 3.11; build it from its sdist into a separate
folder (gcc 12, cmake 3.25 build it unpatched; it needs zlib's headers):

    pip download --no-binary :all: --no-deps atari-py==0.2.9
    tar xzf atari-py-0.2.9.tar.gz
    MAKEFLAGS=-j2 pip install --no-deps --no-build-isolation --target /tmp/atarisite ./atari-py-0.2.9

The ROMs are ale-py's own (`ale_py/roms/<game>.bin`) unless --atari-py-rom-dir / --ale-py-rom-dir
name a folder of `<game>.bin` files (ALE 0.6 picks the game's settings by the file name's stem).
atari-py <= 0.2.6 shipped its own ROMs; its bank_heist.bin (md5 83b8c01c...) is not ale-py's
(00ce0bdd...) and plays as a PAL cartridge (250-row screen, PAL colours): pass
`--atari-py-rom-dir` a folder holding it to compare that setup.

`--policy random` draws the actions from numpy; `--policy lookahead` replays a plan found by a
look-ahead search on ale-py alone (slow: ~8 min per 20k frames), which scores far above random so
that the comparison also covers states a trained agent reaches; `--plan-dir` caches the plans.

    python benchmark/emulator_compare.py --atari-py-path /tmp/atarisite \\
        --games bank_heist asterix pong --seeds 0 1 2 --frames 20000 \\
        --out benchmark/results/emulator_compare.json
    python benchmark/emulator_compare.py --games bank_heist --atari-py-rom-dir /tmp/roms026 \\
        --out benchmark/results/emulator_compare_bankheist_atari_py_0.2.6_rom.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

FIELDS = ("reward", "lives", "game_over", "screen", "ram")


class Emulator:
    """One ALEInterface behind a common API (atari-py takes bytes, ale-py takes str/enums)."""

    def __init__(self, kind: str, module):
        self.kind, self.mod = kind, module
        self.ale = module.ALEInterface()
        self.actions = []

    def _key(self, s: str):
        return s.encode() if self.kind == "atari_py" else s

    def get_int(self, key: str) -> int:
        return int(self.ale.getInt(self._key(key)))

    def get_float(self, key: str) -> float:
        return float(self.ale.getFloat(self._key(key)))

    def configure(self, seed: int, sticky: float) -> None:
        self.ale.setInt(self._key("random_seed"), seed)
        self.ale.setFloat(self._key("repeat_action_probability"), sticky)
        self.ale.setInt(self._key("frame_skip"), 1)
        self.ale.setInt(self._key("max_num_frames_per_episode"), 0)
        self.ale.setBool(self._key("color_averaging"), False)

    def load(self, rom: str) -> None:
        self.ale.loadROM(self._key(rom))
        self.actions = [int(getattr(a, "value", a)) for a in self.ale.getMinimalActionSet()]

    def modes(self) -> list[int]:
        return [int(m) for m in self.ale.getAvailableModes()]

    def difficulties(self) -> list[int]:
        return [int(d) for d in self.ale.getAvailableDifficulties()]

    def act(self, action: int) -> int:
        a = action if self.kind == "atari_py" else self.mod.Action(action)
        return int(self.ale.act(a))

    def reset(self) -> None:
        self.ale.reset_game()

    def observe(self) -> dict:
        return {
            "lives": int(self.ale.lives()),
            "game_over": bool(self.ale.game_over()),
            "screen": np.asarray(self.ale.getScreenGrayscale()).reshape(-1, 160).copy(),  # 210 rows NTSC, 250 PAL
            "ram": np.asarray(self.ale.getRAM()).copy(),
        }

    def frames(self) -> tuple[int, int]:
        return int(self.ale.getFrameNumber()), int(self.ale.getEpisodeFrameNumber())


def import_emulators(atari_py_path: str):
    if atari_py_path:
        sys.path.insert(0, atari_py_path)
    import atari_py  # noqa: E402
    import ale_py  # noqa: E402

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    return atari_py, ale_py


def rom_path(ale_py, game: str, rom_dir: str = "") -> str:
    """`rom_dir`/<game>.bin, by default ale-py's own ROM (ALE 0.6 needs that file name stem)."""
    return os.path.join(rom_dir or os.path.join(os.path.dirname(ale_py.__file__), "roms"), game + ".bin")


def md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def diff_fields(a: dict, b: dict) -> list[str]:
    out = []
    for k in FIELDS:
        if k not in a:
            continue
        va, vb = a[k], b[k]
        same = np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb
        if not same:
            out.append(k)
    return out


def describe(a: dict, b: dict, fields: list[str]) -> dict:
    """What differs, in a few numbers: scalar values, or how many screen pixels / RAM bytes."""
    d = {}
    for k in fields:
        if k in ("screen", "ram") and a[k].shape != b[k].shape:
            d[k] = {"shape": {"atari_py": list(a[k].shape), "ale_py": list(b[k].shape)}}
        elif k in ("screen", "ram"):
            idx = np.flatnonzero(a[k].ravel() != b[k].ravel())
            d[k] = {"n_differ": int(idx.size), "first_indices": idx[:16].tolist()}
            if k == "screen":
                rows = np.unique(idx // 160)
                d[k]["rows"] = [int(rows.min()), int(rows.max())]
        else:
            d[k] = {"atari_py": a[k], "ale_py": b[k]}
    return d


def compare_state(emus: list[Emulator]) -> dict:
    obs = [e.observe() for e in emus]
    fields = diff_fields(*obs)
    return {
        "identical": not fields,
        "differ": describe(obs[0], obs[1], fields),
        "frames": {e.kind: e.frames() for e in emus},
        "lives": {e.kind: o["lives"] for e, o in zip(emus, obs)},
    }


def action_indices(seed: int, n_actions: int, frames: int, hold: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_actions, size=-(-frames // hold))
    return np.repeat(draws, hold)[:frames]


def run_chunks(ale, acts, chunk_actions, hold: int, reset_on_over: bool = False) -> int:
    """ale-py: each of `chunk_actions` (indices into `acts`) held `hold` frames; the reward."""
    r = 0
    for i in chunk_actions:
        for _ in range(hold):
            r += ale.act(acts[i])
        if reset_on_over and ale.game_over():
            ale.reset_game()
    return r


def best_macro(ale, acts, moves, rng, n_macro: int, n_roll: int, hold: int) -> int:
    """The action that, held n_macro chunks and followed by n_roll random move chunks, scores
    best (half weight on the roll-out, life losses penalised); ale-py's state is restored."""
    state, lives0, best = ale.cloneState(), ale.lives(), (-np.inf, 0)
    for i in range(len(acts)):
        r = run_chunks(ale, acts, [i] * n_macro, hold)
        lost_now = ale.lives() < lives0
        r += 0.5 * run_chunks(ale, acts, rng.choice(moves, size=n_roll), hold)
        score = r - 1000 * lost_now - 300 * (ale.lives() < lives0) + rng.random()
        best = max(best, (score, i))
        ale.restoreState(state)
    return best[1]


def lookahead_plan(ale_py, rom: str, seed: int, frames: int, hold: int, macro: int = 16,
                   horizon: int = 256) -> np.ndarray:
    """A per-frame index sequence that plays far better than random (so that the comparison
    reaches the states a trained agent sees), found by look-ahead search on ale-py alone."""
    emu = Emulator("ale_py", ale_py)
    emu.configure(seed, 0.0)
    emu.load(rom)
    ale = emu.ale
    ale.reset_game()
    acts = ale.getMinimalActionSet()
    moves = [i for i, a in enumerate(acts) if "FIRE" not in a.name]
    rng, plan = np.random.default_rng(seed), []
    while len(plan) * hold < frames:
        best = best_macro(ale, acts, moves, rng, macro // hold, horizon // hold, hold)
        run_chunks(ale, acts, [best] * (macro // hold), hold, reset_on_over=True)
        plan.extend([best] * (macro // hold))
    return np.repeat(plan, hold)[:frames]


def policy_indices(mods, args, game: str, seed: int, n_actions: int, rom: str) -> np.ndarray:
    if args.policy == "random":
        return action_indices(seed, n_actions, args.frames, args.hold)
    path = os.path.join(args.plan_dir, f"{game}_seed{seed}_{args.frames}f_hold{args.hold}.npy") if args.plan_dir else ""
    if path and os.path.exists(path):
        return np.load(path)
    plan = lookahead_plan(mods[1], rom, seed, args.frames, args.hold)
    if path:
        os.makedirs(args.plan_dir, exist_ok=True)
        np.save(path, plan)
    return plan


class Tally:
    """One emulator's totals over the run."""

    def __init__(self, lives0: int):
        self.reward, self.life_losses, self.episodes = 0, 0, []
        self.prev_lives, self.ep_frames, self.ep_reward, self.ep_rewards = lives0, 0, 0, []

    def add(self, r: int, lives: int) -> None:
        self.reward += r
        self.ep_reward += r
        self.ep_frames += 1
        self.life_losses += int(lives < self.prev_lives)
        self.prev_lives = lives

    def end_episode(self, lives_after_reset: int) -> None:
        self.episodes.append(self.ep_frames)
        self.ep_rewards.append(self.ep_reward)
        self.ep_frames, self.ep_reward, self.prev_lives = 0, 0, lives_after_reset

    def summary(self) -> dict:
        return {"sum_reward": self.reward, "life_losses": self.life_losses,
                "episode_lengths": self.episodes, "episode_rewards": self.ep_rewards,
                "unfinished_episode": {"frames": self.ep_frames, "reward": self.ep_reward}}


def play(emus: list[Emulator], indices: np.ndarray) -> dict:
    tallies = [Tally(e.observe()["lives"]) for e in emus]
    counts = {k: 0 for k in FIELDS}
    counts["any"], first, reset_diffs, ram_ever = 0, None, 0, np.zeros(128, bool)
    for t, i in enumerate(indices):
        obs = []
        for e, tally in zip(emus, tallies):
            o = {"reward": e.act(e.actions[i])}
            o.update(e.observe())
            tally.add(o["reward"], o["lives"])
            obs.append(o)
        fields = diff_fields(*obs)
        ram_ever |= obs[0]["ram"] != obs[1]["ram"]
        for k in fields:
            counts[k] += 1
        counts["any"] += bool(fields)
        if fields and first is None:
            first = {"frame": t + 1, "fields": fields, "detail": describe(obs[0], obs[1], fields),
                     "episode_frame": {e.kind: e.frames()[1] for e in emus}}
        reset_diffs += handle_game_over(emus, obs, tallies)
    return {"first_difference": first, "frames_differing": counts, "reset_states_differing": reset_diffs,
            "ram_addresses_ever_differing": [hex(0x80 + int(i)) for i in np.flatnonzero(ram_ever)],
            "totals": {e.kind: t.summary() for e, t in zip(emus, tallies)}}


def handle_game_over(emus: list[Emulator], obs: list[dict], tallies: list[Tally]) -> int:
    """reset_game on each emulator that is over; 1 if both reset and their new states differ."""
    over = [o["game_over"] for o in obs]
    for e, o, tally in zip(emus, obs, tallies):
        if o["game_over"]:
            e.reset()
            tally.end_episode(e.observe()["lives"])
    if all(over):
        return int(not compare_state(emus)["identical"])
    return 0


def run_one(mods, args, game: str, seed: int, rom_dirs: dict) -> dict:
    frames, hold, sticky = args.frames, args.hold, args.repeat_action_probability
    roms = {k: rom_path(mods[1], game, d) for k, d in rom_dirs.items()}
    emus = [Emulator("atari_py", mods[0]), Emulator("ale_py", mods[1])]
    defaults = {e.kind: {"repeat_action_probability": e.get_float("repeat_action_probability"),
                         "frame_skip": e.get_int("frame_skip"),
                         "max_num_frames_per_episode": e.get_int("max_num_frames_per_episode")} for e in emus}
    for e in emus:
        e.configure(seed, sticky)
        e.load(roms[e.kind])
    res = {"game": game, "seed": seed, "rom": roms, "rom_md5": {k: md5(r) for k, r in roms.items()}, "frames": frames, "hold": hold, "policy": args.policy,
           "repeat_action_probability": sticky,
           "defaults_before_configure": defaults,
           "minimal_actions": {e.kind: e.actions for e in emus},
           "modes": {e.kind: e.modes() for e in emus},
           "difficulties": {e.kind: e.difficulties() for e in emus},
           "after_load": compare_state(emus)}
    res["minimal_actions_equal"] = emus[0].actions == emus[1].actions
    for e in emus:
        e.reset()
    res["after_reset"] = compare_state(emus)
    res.update(play(emus, policy_indices(mods, args, game, seed, len(emus[1].actions), roms["ale_py"])))
    return res


def table(results: list[dict]) -> str:
    head = ("| game | seed | ROM md5 atari_py / ale_py | actions equal | reset state equal | first diff frame (fields) | frames differing |"
            " reward atari_py / ale_py | life losses | episodes (lengths) |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        ta, tb = r["totals"]["atari_py"], r["totals"]["ale_py"]
        fd = r["first_difference"]
        first = "none" if fd is None else f"{fd['frame']} ({', '.join(fd['fields'])})"
        lens = f"{ta['episode_lengths']} / {tb['episode_lengths']}"
        m = r["rom_md5"]
        lines.append(f"| {r['game']} | {r['seed']} | {m['atari_py'][:8]} / {m['ale_py'][:8]} | {r['minimal_actions_equal']} | {r['after_reset']['identical']} |"
                     f" {first} | {r['frames_differing']['any']}/{r['frames']} |"
                     f" {ta['sum_reward']} / {tb['sum_reward']} | {ta['life_losses']} / {tb['life_losses']} | {lens} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--games", nargs="+", default=["bank_heist", "asterix", "pong"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--frames", type=int, default=20_000)
    p.add_argument("--hold", type=int, default=4, help="frames each drawn action is held")
    p.add_argument("--repeat-action-probability", type=float, default=0.0,
                   help="0 as in the Atari 100k protocol; >0 also tests that both RNGs draw alike")
    p.add_argument("--atari-py-path", default="/tmp/atarisite", help="folder that holds atari_py")
    p.add_argument("--atari-py-rom-dir", default="", help="ROM folder for atari-py (default: ale-py's roms/)")
    p.add_argument("--ale-py-rom-dir", default="", help="ROM folder for ale-py (default: its roms/)")
    p.add_argument("--policy", choices=["random", "lookahead"], default="random",
                   help="random: numpy draws; lookahead: a search on ale-py that scores far above random")
    p.add_argument("--plan-dir", default="", help="cache of lookahead plans (.npy, per-frame action indices)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    mods = import_emulators(args.atari_py_path)
    rom_dirs = {"atari_py": args.atari_py_rom_dir, "ale_py": args.ale_py_rom_dir}
    results = [run_one(mods, args, g, s, rom_dirs) for g in args.games for s in args.seeds]
    print(table(results))
    if args.out:
        meta = {"atari_py_file": mods[0].__file__, "ale_py_version": mods[1].__version__, "args": vars(args)}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
