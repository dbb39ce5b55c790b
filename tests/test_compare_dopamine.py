"""benchmark/compare_dopamine.py on Dopamine's data format: our curves against its seeds."""

import csv
import json
import os
import subprocess
import sys

import numpy as np

from agent_runs import ROOT

SCRIPT = os.path.join(ROOT, "benchmark", "compare_dopamine.py")
M = 1_000_000


def dopamine_file(folder, game, values):
    """values[agent][iteration] = the seeds' values, in Dopamine's record layout."""
    records = [{"Iteration": it, "Value": v, "Agent": agent}
               for agent, per_iteration in values.items() for it, seeds in enumerate(per_iteration) for v in seeds]
    (folder / f"{game.lower()}_Impala.json").write_text(json.dumps(records))


def our_run(root, exp_name, game, seed, returns, frames_per_iteration=M, num_envs=1, late_steps=0, finished=True):
    """late_steps: how many agent steps past each boundary the iterations end (--num-envs K: up to K - 1)."""
    path = root / f"{game}__{exp_name}__{seed}"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"exp_name": exp_name, "seed": seed, "env_id": f"ALE/{game}-v5",
                                                  "num_envs": num_envs}))
    steps = [(i + 1) * frames_per_iteration // 4 + late_steps for i in range(len(returns))]
    lines = [{"iteration": i, "step": step, "frames": 4 * step, "episode_return": r, "sps": 500.0}
             for i, (step, r) in enumerate(zip(steps, returns))]
    if finished:
        lines.append({"final": True, "game": game, "env_id": f"ALE/{game}-v5", "seed": seed})
    (path / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def run(*argv):
    return subprocess.run([sys.executable, SCRIPT, *map(str, argv)], capture_output=True, text=True, timeout=120)


def test_our_last_iteration_against_dopamines_seeds(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    dopamine_file(data, "Pong", {"DQN": [[-21, -20, -21], [-15, -10, -12], [0, 5, 10]],
                                 "Rainbow": [[-20, -20, -20], [-5, -6, -7], [15, 16, 17]]})
    dopamine_file(data, "Breakout", {"DQN": [[1, 2, 3], [10, 20, 30]], "Rainbow": [[1, 1, 1], [5, 5, 5]]})
    for seed, (a, b) in enumerate(((-10.0, 7.0), (-12.0, 9.0))):
        our_run(runs, "dqn_none", "Pong", seed, [-20.0, a, b, 12.0])  # one iteration more than Dopamine's
        our_run(runs, "dqn_none", "Breakout", seed, [2.0, 40.0 + seed])
    out = run(runs, "--dopamine-data", data, "--agents", "DQN", "--out", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "out" / "compare.csv") as f:
        rows = {r["game"]: r for r in csv.DictReader(f)}
    pong = rows["Pong"]
    assert int(pong["iteration"]) == 2 and int(pong["frames"]) == 3 * M, "the last iteration both have"
    assert float(pong["our_mean"]) == 8.0 and float(pong["dopamine_mean"]) == 5.0
    assert float(pong["dopamine_std"]) == np.std([0, 5, 10], ddof=1)
    assert pong["our_mean_among_dopamine_seeds"] == "2 of 3 below"
    assert rows["Breakout"]["our_mean_among_dopamine_seeds"] == "above all"
    assert "Rainbow" not in open(tmp_path / "out" / "compare.csv").read()
    assert os.path.getsize(tmp_path / "out" / "compare.png") > 0 and "| Pong | dqn_none | DQN | 3M |" in out.stdout


def test_bad_input_is_one_line(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    our_run(runs, "dqn_none", "Pong", 0, [-20.0, -19.0])
    out = run(runs, "--dopamine-data", data)
    assert out.returncode == 2 and "no Dopamine data at" in out.stderr and "Traceback" not in out.stderr
    dopamine_file(data, "Pong", {"DQN": [[-21], [-20]]})
    out = run(runs, "--dopamine-data", data, "--agents", "IQN")
    assert out.returncode == 2 and "has no agent IQN; it has DQN" in out.stderr
    short = tmp_path / "short"
    our_run(short, "dqn_none", "Pong", 0, [-20.0], frames_per_iteration=4000)
    out = run(short, "--dopamine-data", data)
    assert out.returncode == 2 and "iteration of 1M frames" in out.stderr


def test_iterations_that_end_a_few_steps_late_with_several_environments(tmp_path):
    """With --num-envs 8 an iteration ends up to 7 agent steps past 250k: still Dopamine's
    iteration; a run still going counts up to its last iteration. A record 8 steps late is
    not an iteration boundary of an 8-environment run."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    dopamine_file(data, "Pong", {"DQN": [[-21, -20], [-15, -10], [0, 5]]})
    our_run(runs, "dqn_none", "Pong", 0, [-20.0, -12.0], num_envs=8, late_steps=7, finished=False)
    our_run(runs, "dqn_none", "Pong", 1, [-19.0, -14.0], num_envs=8, late_steps=1)
    out = run(runs, "--dopamine-data", data, "--agents", "DQN", "--out", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "out" / "compare.csv") as f:
        pong = next(csv.DictReader(f))
    assert int(pong["iteration"]) == 1 and float(pong["our_mean"]) == -13.0
    late = tmp_path / "late"
    our_run(late, "dqn_none", "Pong", 0, [-20.0, -12.0], num_envs=8, late_steps=8)
    out = run(late, "--dopamine-data", data)
    assert out.returncode == 2 and "iteration of 1M frames" in out.stderr
