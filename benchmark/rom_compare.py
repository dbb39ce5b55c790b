"""Which Atari 100k ROMs differ between atari-py 0.2.6 and ale-py, and how? (issue 8)

atari-py 0.2.6 and earlier shipped their own ROM files; atari-py 0.2.7 on and ale-py use another
set (ale-py's bundled ROMs, the md5s atari-py 0.2.9 imports). The published Atari 100k runs of 2020-2021
may have played the older set. For every game this compares the two files: their md5, and,
loaded in ale-py (which plays both), the screen size (250 rows is a PAL cartridge), the minimal
action set, and what one action sequence does in each (the same pseudo-random actions, held 4
frames each, `--frames` frames, a new game on game over): on how many frames the reward or the
lives differ, the totals, and for equal screen sizes the share of frames whose grayscale screens
differ. Emulator-level identity of atari-py and ale-py on one ROM is `emulator_compare.py`'s.

    pip download --no-binary :all: --no-deps atari-py==0.2.6 && tar xzf atari-py-0.2.6.tar.gz
    python benchmark/rom_compare.py --old-roms atari-py-0.2.6/atari_py/atari_roms \\
        --out benchmark/results/rom_compare_atari_py_0.2.6.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulator_compare import md5  # noqa: E402

GAMES = ["alien", "amidar", "assault", "asterix", "bank_heist", "battle_zone", "boxing", "breakout", "chopper_command",
         "crazy_climber", "demon_attack", "freeway", "frostbite", "gopher", "hero", "jamesbond", "kangaroo", "krull",
         "kung_fu_master", "ms_pacman", "pong", "private_eye", "qbert", "road_runner", "seaquest", "up_n_down"]


def load(ale_py, path: str):
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.setInt("random_seed", 0)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(path)
    return ale


def play_both(new, old, frames: int, seed: int) -> dict:
    """The same held actions in both; frames where reward or lives differ, totals, screens."""
    actions = new.getMinimalActionSet()
    sequence = np.repeat(np.random.default_rng(seed).integers(len(actions), size=frames // 4 + 1), 4)[:frames]
    same_size = new.getScreenDims() == old.getScreenDims()
    totals = {"ale_py": {"reward": 0, "life_losses": 0, "games_over": 0}, "atari_py_0.2.6": {"reward": 0, "life_losses": 0, "games_over": 0}}
    differ, first, screens_differ = 0, None, 0
    for i, a in enumerate(sequence):
        seen = []
        for name, ale in (("ale_py", new), ("atari_py_0.2.6", old)):
            lives = ale.lives()
            reward = ale.act(actions[a])
            t = totals[name]
            t["reward"] += reward
            t["life_losses"] += int(ale.lives() < lives)
            seen.append((reward, ale.lives()))
            if ale.game_over():
                t["games_over"] += 1
                ale.reset_game()
        if seen[0] != seen[1]:
            differ += 1
            first = i if first is None else first
        if same_size and not np.array_equal(new.getScreenGrayscale(), old.getScreenGrayscale()):
            screens_differ += 1
    return {"frames": frames, "reward_or_lives_differ_frames": differ, "first_differing_frame": first,
            "screens_differ_share": screens_differ / frames if same_size else None, "totals": totals}


def compare(ale_py, game: str, old_dir: str, frames: int, seed: int) -> dict:
    new_path, old_path = str(ale_py.roms.get_rom_path(game)), os.path.join(old_dir, f"{game}.bin")
    row = {"game": game, "md5": {"ale_py": md5(new_path), "atari_py_0.2.6": md5(old_path) if os.path.exists(old_path) else None}}
    row["same_rom"] = row["md5"]["ale_py"] == row["md5"]["atari_py_0.2.6"]
    if row["same_rom"] or row["md5"]["atari_py_0.2.6"] is None:
        return row
    new, old = load(ale_py, new_path), load(ale_py, old_path)
    row["screen"] = {"ale_py": list(new.getScreenDims()), "atari_py_0.2.6": list(old.getScreenDims())}
    row["actions_equal"] = list(new.getMinimalActionSet()) == list(old.getMinimalActionSet())
    row.update(play_both(new, old, frames, seed))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-roms", required=True, help="atari-py 0.2.6's atari_py/atari_roms folder")
    parser.add_argument("--games", nargs="+", default=GAMES, help="ale-py's game names (the 26 of Atari 100k)")
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file of the comparison")
    opts = parser.parse_args()
    if not os.path.isdir(opts.old_roms):
        sys.exit(f"error: --old-roms {opts.old_roms} is not a folder: pass atari-py 0.2.6's atari_py/atari_roms")
    import ale_py
    rows = [compare(ale_py, g, opts.old_roms, opts.frames, opts.seed) for g in opts.games]
    print("| game | same ROM | screen (ale-py, 0.2.6) | frames where reward or lives differ | screens differ | reward (ale-py, 0.2.6) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["same_rom"]:
            print(f"| {r['game']} | yes | | | | |")
            continue
        t, s = r["totals"], r["screens_differ_share"]
        print(f"| {r['game']} | no | {r['screen']['ale_py'][0]}, {r['screen']['atari_py_0.2.6'][0]} rows "
              f"| {r['reward_or_lives_differ_frames']:,} of {r['frames']:,} | {'-' if s is None else f'{s:.0%}'} "
              f"| {t['ale_py']['reward']:g}, {t['atari_py_0.2.6']['reward']:g} |")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump({"ale_py": ale_py.__version__, "frames": opts.frames, "seed": opts.seed, "games": rows}, f, indent=1)
        print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
