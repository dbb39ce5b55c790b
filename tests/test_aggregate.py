"""benchmark/aggregate.py on run folders written here with known scores, on bad input, and on a
real tiny run of dqn_moe_atari.py (so the format it reads stays the agents')."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import ale_py.roms
import numpy as np
import pytest
import scipy.stats
from rliable import library as rly
from rliable import metrics

from agent_runs import ROOT, only_run_dir, records
from agent_runs import run as run_script

sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import aggregate  # noqa: E402
import compare_runs  # noqa: E402
import rank_against_published  # noqa: E402

# (random, human) of DQN Zoo's atari_data.py, typed here from it, not read from the table under test
KNOWN = {"Pong": (-20.7, 14.6), "Breakout": (1.7, 30.5), "Seaquest": (68.4, 42054.7), "Asterix": (210.0, 8503.3),
         "MsPacman": (307.3, 6951.6)}
FRAMES = 1_000_000  # per iteration


def raw(game, normalised):
    random, human = KNOWN[game]
    return random + normalised * (human - random)


def write_run(root, exp_name, game, seed, returns, *, finished=True, evals=None, frames=FRAMES, **config):
    """A run folder as the agents write it: config.json; summary.jsonl with one record per iteration
    (training return returns[i], None for an iteration without episodes), evaluation records
    [(step, return)] and the final record."""
    path = root / f"{game}__{exp_name}__{seed}__{len(os.listdir(root)) if root.exists() else 0}"
    path.mkdir(parents=True)
    cfg = {"exp_name": exp_name, "seed": seed, "env_id": f"ALE/{game}-v5", "moe": "soft", "num_experts": 4,
           "runs_dir": str(root), **config}
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    lines = [{"iteration": i, "step": (i + 1) * frames // 4, "frames": (i + 1) * frames, "episode_return": r,
              "episodes": 0 if r is None else 3, "sps": 500.0, "srank": 7} for i, r in enumerate(returns)]
    lines += [{"eval": True, "step": step, "frames": 4 * step, "eval_return": value, "eval_episodes": 100}
              for step, value in evals or []]
    if finished:
        last = evals[-1][1] if evals else returns[-1]
        lines.append({"final": True, "step": len(returns) * frames // 4, "frames": len(returns) * frames,
                      "env_id": cfg["env_id"], "game": game, "agent": "dqn", "moe": cfg["moe"],
                      "num_experts": cfg["num_experts"], "seed": seed,
                      **({"eval_return": last, "score": last} if evals else {"episode_return": last})})
    (path / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def write_algorithm(root, exp_name, normalised, **config):
    """Runs of normalised scores normalised[seed][game][iteration] (games in KNOWN order)."""
    for seed, per_game in enumerate(normalised):
        for game, series in zip(KNOWN, per_game):
            write_run(root, exp_name, game, seed, [raw(game, x) for x in series], **config)


def run_cli(*argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmark", "aggregate.py"), *map(str, argv)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def aggregates(out):
    return {(r["algorithm"], r["metric"]): r for r in read_csv(os.path.join(out, "aggregates.csv"))}


def final_scores(out):
    return {(r["algorithm"], r["game"], int(r["seed"])): float(r["final_score"])
            for r in read_csv(os.path.join(out, "runs.csv")) if r["included"] == "True"}


def run_main(capsys, *argv):
    """aggregate.main in this process (no interpreter start): (exit status, stdout, stderr)."""
    status = aggregate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---- normalisation ----
def test_human_normalisation_of_known_scores():
    rows = aggregate.load_tables(aggregate.default_tables())
    for game, (random, human) in KNOWN.items():
        row = rows[aggregate.table_key(game)]
        assert (row.zero, row.one) == (random, human)
        assert aggregate.normalise(random, row) == 0.0
        assert aggregate.normalise(human, row) == pytest.approx(1.0)
    pong = rows[aggregate.table_key("Pong")]
    assert aggregate.normalise(0.0, pong) == pytest.approx(20.7 / 35.3)
    for name in ("ALE/Pong-v5", "pong", "PongNoFrameskip-v4"):
        assert rows[aggregate.table_key(name)] is pong
    assert rows[aggregate.table_key("ALE/AirRaid-v5")].one is None  # in the 20-game set, no published human score


def test_table_covers_every_game_of_the_paper():
    rows = aggregate.load_tables(aggregate.default_tables())
    # appendix A: the 20-game subset, then the 26 games of Atari 100k and the rest of the 60-game set
    paper = ("AirRaid Asterix Asteroids Bowling Breakout DemonAttack Freeway Gravitar Jamesbond MontezumaRevenge "
             "MsPacman Pong PrivateEye Qbert Seaquest SpaceInvaders Venture WizardOfWor YarsRevenge Zaxxon Alien "
             "Amidar Assault BankHeist BattleZone Boxing ChopperCommand CrazyClimber Frostbite Gopher Hero "
             "Kangaroo Krull KungFuMaster RoadRunner UpNDown Atlantis BeamRider Berzerk Carnival Centipede "
             "DoubleDunk ElevatorAction Enduro FishingDerby IceHockey JourneyEscape NameThisGame Phoenix Pitfall "
             "Pooyan Riverraid Robotank Skiing Solaris StarGunner Tennis TimePilot Tutankham VideoPinball").split()
    assert len(set(paper)) == 60
    unscored = {g for g in paper if rows[aggregate.table_key(g)].one is None}
    assert unscored == {"AirRaid", "Carnival", "ElevatorAction", "JourneyEscape", "Pooyan"}


# ---- aggregate statistics ----
@pytest.fixture(scope="module")
def two_algorithms(tmp_path_factory):
    """3 seeds x 5 games x 4 iterations of normalised scores for 'base', and 'better' = base + 3
    everywhere (it wins every pair of runs on every game)."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    base = rng.uniform(-0.2, 2.0, size=(3, len(KNOWN), 4)).round(3)
    write_algorithm(root, "base", base)
    write_algorithm(root, "better", base + 3.0)
    return root, base


@pytest.fixture(scope="module")
def two_algorithms_out(two_algorithms, tmp_path_factory):
    root, _ = two_algorithms
    out = tmp_path_factory.mktemp("out")
    assert aggregate.main([str(root), "--out", str(out), "--reps", "300", "--baseline", "base"]) == 0
    return out


def test_aggregates_equal_a_direct_computation(two_algorithms, two_algorithms_out):
    _, base = two_algorithms
    for name, scores in (("base", base), ("better", base + 3.0)):
        final = scores[:, :, -1]  # runs x games, the last iteration
        table = aggregates(two_algorithms_out)
        expected = {"IQM": scipy.stats.trim_mean(final.ravel(), 0.25), "Median": np.median(final.mean(axis=0)),
                    "Mean": final.mean(), "Optimality Gap": np.mean(np.maximum(1 - final, 0))}
        for metric, value in expected.items():
            row = table[(name, metric)]
            assert float(row["estimate"]) == pytest.approx(value, abs=1e-9), (name, metric)
            assert float(row["ci_low"]) <= float(row["estimate"]) <= float(row["ci_high"])
            assert row["runs_per_game"] == "3" and row["games"] == str(len(KNOWN))


def test_probability_of_improvement(two_algorithms_out, tmp_path, capsys):
    assert float(aggregates(two_algorithms_out)[("better", "P(X > base)")]["estimate"]) == pytest.approx(1.0)
    root = tmp_path / "runs"
    scores = np.random.default_rng(1).uniform(0, 1, size=(3, len(KNOWN), 2))
    write_algorithm(root, "a", scores)
    write_algorithm(root, "b", scores)
    status, _, _ = run_main(capsys, root, "--out", tmp_path / "out", "--reps", "50", "--baseline", "a")
    assert status == 0
    row = aggregates(tmp_path / "out")[("b", "P(X > a)")]
    assert float(row["estimate"]) == pytest.approx(0.5)
    assert float(row["ci_low"]) < 0.5 < float(row["ci_high"])


def test_vectorised_probability_of_improvement_is_rliables():
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = rng.integers(0, 4, size=(rng.integers(1, 6), 7)).astype(float)  # small integers: many ties
        y = rng.integers(0, 4, size=(rng.integers(1, 6), 7)).astype(float)
        assert aggregate.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))


def test_confidence_intervals_cover_the_true_value():
    """40 fixed data sets of 10 runs x 5 games drawn from N(0.7, 0.5): the 95% CIs of IQM and mean
    (both 0.7 here) cover it in most of them (binomial(40, ~0.93): fewer than 32 has p < 0.01),
    and are about as wide as the standard error says (3.92 x 0.5 / sqrt(50) = 0.28)."""
    covered, widths = np.zeros(2), []
    for i in range(40):
        scores = np.random.default_rng(100 + i).normal(0.7, 0.5, size=(10, 5))
        point, interval = aggregate.interval_estimate(scores, aggregate.aggregate_metrics, reps=200, seed=i)
        for k, metric in enumerate((0, 2)):  # IQM, mean
            assert interval[0, metric] <= point[metric] <= interval[1, metric]
            covered[k] += interval[0, metric] <= 0.7 <= interval[1, metric]
        widths.append(interval[1, 2] - interval[0, 2])
    assert (covered >= 32).all(), covered
    assert 0.2 < np.mean(widths) < 0.36, np.mean(widths)


def test_fast_statistics_give_rliables_intervals():
    """With the same resamples (same seed), the vectorised IQM per point, score distribution and
    probability of improvement give the CIs of rliable's own functions."""
    rng = np.random.default_rng(5)
    curves, x, y = rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    taus = np.linspace(-2, 2, 21)
    iqms = lambda s: np.array([metrics.aggregate_iqm(s[..., i]) for i in range(s.shape[-1])])  # noqa: E731
    for ours, reference in (
            (lambda: aggregate.interval_estimate(curves, aggregate.iqm_per_point, 50, seed=1)[1],
             lambda: rly.get_interval_estimates({"x": curves}, iqms, reps=50)[1]["x"]),
            (lambda: aggregate.profile_estimate(x, taus, 50, seed=1)[1],
             lambda: rly.create_performance_profile({"x": x}, taus, reps=50)[1]["x"]),
            (lambda: aggregate.interval_estimate((x, y), aggregate.probability_of_improvement, 50, seed=1)[1],
             lambda: rly.get_interval_estimates({"x": (x, y)}, metrics.probability_of_improvement, reps=50)[1]["x"])):
        mine = ours()
        np.random.seed(1)
        assert np.allclose(mine, reference())


def test_bootstrap_is_reproducible_and_follows_the_seed():
    scores = np.random.default_rng(3).normal(size=(4, 6))
    a = aggregate.interval_estimate(scores, aggregate.aggregate_metrics, reps=200, seed=7)[1]
    b = aggregate.interval_estimate(scores, aggregate.aggregate_metrics, reps=200, seed=7)[1]
    c = aggregate.interval_estimate(scores, aggregate.aggregate_metrics, reps=200, seed=8)[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ---- curves and the final score of a run ----
def test_curves_are_the_iqm_of_every_iteration(two_algorithms, two_algorithms_out):
    _, base = two_algorithms
    rows = [r for r in read_csv(os.path.join(two_algorithms_out, "curves.csv")) if r["algorithm"] == "base"]
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3]
    assert [int(r["frames"]) for r in rows] == [FRAMES, 2 * FRAMES, 3 * FRAMES, 4 * FRAMES]
    for r, i in zip(rows, range(4)):
        assert float(r["iqm"]) == pytest.approx(scipy.stats.trim_mean(base[:, :, i].ravel(), 0.25), abs=1e-9)
        assert float(r["ci_low"]) <= float(r["iqm"]) <= float(r["ci_high"])
    array = np.random.default_rng(4).normal(size=(3, 5, 6))
    assert aggregate.iqm_per_point(array) == pytest.approx([metrics.aggregate_iqm(array[..., i]) for i in range(6)])


def test_at_frames_and_final_window_pick_the_iterations(tmp_path, capsys):
    returns = [1.0, 2.0, 4.0, 8.0, 16.0]
    points = aggregate.score_points([{"iteration": i, "frames": (i + 1) * FRAMES, "episode_return": r}
                                     for i, r in enumerate(returns)])
    for at_frames, window, expected in ((None, 1, 16.0), (3.5 * FRAMES, 1, 4.0), (3 * FRAMES, 1, 4.0), (None, 2, 12.0),
                                        (2 * FRAMES, 3, 1.5), (0.5 * FRAMES, 1, None)):
        assert aggregate.final_score(points, at_frames, window) == expected, (at_frames, window)
    write_run(tmp_path / "runs", "dqn", "Pong", 0, returns)
    status, _, _ = run_main(capsys, tmp_path / "runs", "--out", tmp_path / "out", "--reps", "20",
                            "--at-frames", 3.5 * FRAMES, "--final-window", "2")
    assert status == 0
    assert final_scores(tmp_path / "out") == {("dqn", "Pong", 0): 3.0}
    curve = read_csv(tmp_path / "out" / "curves.csv")
    assert [int(r["frames"]) for r in curve] == [FRAMES, 2 * FRAMES, 3 * FRAMES]  # --at-frames cuts the curve too


def test_iterations_without_episodes_keep_the_previous_score(tmp_path, capsys):
    write_run(tmp_path / "runs", "dqn", "Pong", 0, [None, 2.0, None])
    write_run(tmp_path / "runs", "dqn", "Pong", 1, [None, None, None])  # no episode ended: no score
    status, _, err = run_main(capsys, tmp_path / "runs", "--out", tmp_path / "out", "--reps", "20")
    assert status == 0
    assert final_scores(tmp_path / "out") == {("dqn", "Pong", 0): 2.0}
    assert "no score" in next(r["reason"] for r in read_csv(tmp_path / "out" / "runs.csv") if r["seed"] == "1")


def test_atari100k_evaluations_are_the_score(tmp_path, capsys):
    """The Atari 100k agents also log training iterations; their score is the evaluation return."""
    root = tmp_path / "runs"
    for seed, score in enumerate((5.0, 9.0)):
        write_run(root, "der", "Breakout", seed, [1.0, 1.5], frames=200_000,
                  evals=[(50_000, score - 1), (100_000, score)])
    status, _, _ = run_main(capsys, root, "--out", tmp_path / "out", "--reps", "20")
    assert status == 0
    assert final_scores(tmp_path / "out") == {("der", "Breakout", 0): 5.0, ("der", "Breakout", 1): 9.0}
    curve = read_csv(tmp_path / "out" / "curves.csv")
    assert [int(r["frames"]) for r in curve] == [200_000, 400_000]
    normalised = [(s - 1.7) / (30.5 - 1.7) for s in (4.0, 8.0)]
    assert float(curve[0]["iqm"]) == pytest.approx(np.mean(normalised))


# ---- which runs, which labels ----
def test_unfinished_runs_are_left_out_unless_asked(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, "dqn", "Pong", 0, [1.0, 2.0])
    write_run(root, "dqn", "Pong", 1, [3.0], finished=False)
    status, _, err = run_main(capsys, root, "--out", tmp_path / "a", "--reps", "20")
    assert status == 0
    assert final_scores(tmp_path / "a") == {("dqn", "Pong", 0): 2.0}
    (line,) = [line for line in err.splitlines() if "unfinished run" in line]
    assert line.startswith("warning: 1 unfinished run left out")
    status, _, _ = run_main(capsys, root, "--out", tmp_path / "b", "--reps", "20", "--include-unfinished")
    assert final_scores(tmp_path / "b") == {("dqn", "Pong", 0): 2.0, ("dqn", "Pong", 1): 3.0}
    # a curve over runs of unequal length stops at the shortest
    assert [r["iteration"] for r in read_csv(tmp_path / "b" / "curves.csv")] == ["0"]


def test_labels_by_exp_name_and_by_config_keys(tmp_path, capsys):
    root = tmp_path / "runs"
    for experts in (1, 4):
        for seed in (0, 1):
            write_run(root, "sweep", "Pong", seed, [float(experts + seed)], num_experts=experts)
    status, _, err = run_main(capsys, root, "--out", tmp_path / "a", "--reps", "20")
    assert status == 0 and {a for a, _, _ in final_scores(tmp_path / "a")} == {"sweep"}
    assert "differ in num_experts" in err  # one label over two configurations is worth a warning
    status, _, _ = run_main(capsys, root, "--out", tmp_path / "b", "--reps", "20", "--label-by", "moe,num_experts")
    assert status == 0
    assert final_scores(tmp_path / "b") == {(f"moe=soft num_experts={e}", "Pong", seed): float(e + seed)
                                            for e in (1, 4) for seed in (0, 1)}


def test_unequal_seeds_missing_games_and_unnormalisable_games(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(root, "a", "Pong", seed, [float(seed)])
    for seed in (0, 1):
        write_run(root, "a", "Breakout", seed, [10.0])
        write_run(root, "b", "Pong", seed, [5.0])
        write_run(root, "b", "Breakout", seed, [20.0])
        write_run(root, "a", "AirRaid", seed, [500.0])
        write_run(root, "b", "AirRaid", seed, [600.0])
    write_run(root, "a", "Seaquest", 0, [100.0])  # only 'a' has Seaquest
    status, out, err = run_main(capsys, root, "--out", tmp_path / "out", "--reps", "20")
    assert status == 0
    included = sorted(final_scores(tmp_path / "out"))
    assert included == [(a, g, s) for a in "ab" for g in ("Breakout", "Pong") for s in (0, 1)]
    assert "cannot normalise AirRaid" in err
    assert "left out Seaquest (missing for b)" in err
    assert "'a' has unequal runs per game; kept 2 per game (lowest seeds), left out Pong seed 2" in err
    assert "games: Pong, Breakout." in out or "games: Breakout, Pong." in out
    # the per-game table has every finished run, also those the aggregates leave out
    assert "| AirRaid | 500.0 ± 0.0 (2) | 600.0 ± 0.0 (2) |" in out
    assert "| Pong | 1.0 ± 1.0 (3) | 5.0 ± 0.0 (2) |" in out
    assert "| Seaquest | 100.0 ± 0.0 (1) |  |" in out


def test_a_run_counts_once(tmp_path, capsys):
    root = tmp_path / "runs"
    first = write_run(root, "dqn", "Pong", 0, [1.0])
    write_run(root / "more", "dqn", "Pong", 1, [3.0])
    shutil.copytree(first, root / "copy")  # the same run again
    status, _, err = run_main(capsys, root, root / "more", "--out", tmp_path / "out", "--reps", "20")
    assert status == 0
    assert final_scores(tmp_path / "out") == {("dqn", "Pong", 0): 1.0, ("dqn", "Pong", 1): 3.0}
    assert len(read_csv(tmp_path / "out" / "runs.csv")) == 3  # root/more, given twice, counts once
    assert "repeats" in err


# ---- the command line ----
def test_cli_writes_every_output_and_prints_the_tables(two_algorithms, tmp_path):
    root, _ = two_algorithms
    proc = run_cli(root, "--out", tmp_path / "out", "--reps", "100", "--baseline", "base", "--sweep", "num_experts",
                   "--series-by", "exp_name")
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.md", "aggregates.csv", "per_game.csv", "curves.csv", "runs.csv", "aggregates.png",
                 "curves.png", "profiles.png", "improvement.png", "sweep.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 0, name
    with open(tmp_path / "out" / "summary.md") as f:
        assert f.read() == proc.stdout
    for needle in ("## Aggregates", "| better | 3 |", "## Probability of improvement over base",
                   "## Per-game final scores", "| Pong |", "## Normalisation", "| Seaquest | 68.4 | 42054.7 |",
                   "## Runs"):
        assert needle in proc.stdout, needle
    assert "Traceback" not in proc.stderr


def test_default_output_folder_is_inside_the_first_runs_folder(tmp_path, capsys):
    write_run(tmp_path / "runs", "dqn", "Pong", 0, [1.0])
    assert run_main(capsys, tmp_path / "runs", "--reps", "20")[0] == 0
    assert os.path.exists(tmp_path / "runs" / "aggregate" / "summary.md")
    assert run_main(capsys, tmp_path / "runs", "--reps", "20")[0] == 0  # its own output is not taken for a run


@pytest.mark.parametrize("make, flags, needle", [
    (lambda root: None, [], "is not a folder"),
    (lambda root: root.mkdir(), [], "no runs under"),
    (lambda root: write_run(root, "dqn", "Pong", 0, [1.0]), ["--baseline", "nope"], "unknown --baseline 'nope'"),
    (lambda root: write_run(root, "dqn", "FooBar", 0, [1.0]), [], "no normalisation scores for FooBar"),
    (lambda root: write_run(root, "dqn", "Pong", 0, [1.0], finished=False), [], "--include-unfinished"),
    (lambda root: write_run(root, "dqn", "Pong", 0, [1.0]), ["--label-by", "colour"], "config key 'colour'"),
    (lambda root: write_run(root, "dqn", "Pong", 0, [1.0]), ["--reps", "many"], "--reps"),
    (lambda root: write_run(root, "dqn", "Pong", 0, [1.0]), ["--sweep", "moe"], "numeric config key"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, make, flags, needle):
    make(tmp_path / "runs")
    status, out, err = run_main(capsys, tmp_path / "runs", "--reps", "20", *flags)
    assert status == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("error: ") and needle in err.strip().splitlines()[-1], err


def test_raw_scores_for_a_game_without_a_table(tmp_path, capsys):
    write_run(tmp_path / "runs", "sac", "HalfCheetah", 0, [1000.0, 3000.0], env_id="HalfCheetah-v5")
    write_run(tmp_path / "runs", "sac", "HalfCheetah", 1, [1000.0, 5000.0], env_id="HalfCheetah-v5")
    status, out, _ = run_main(capsys, tmp_path / "runs", "--out", tmp_path / "out", "--reps", "20", "--raw")
    assert status == 0
    table = aggregates(tmp_path / "out")
    assert float(table[("sac", "Mean")]["estimate"]) == 4000.0
    assert ("sac", "Optimality Gap") not in table  # a gap to human level needs a human score


def test_a_normalisation_table_added_as_data(tmp_path, capsys):
    """A future domain's table (MuJoCo: 0-1000) needs no change to the code."""
    table = tmp_path / "mujoco.csv"
    table.write_text("# scores normalised between 0 and 1000\ngame,zero,thousand\nHalfCheetah,0,1000\n")
    write_run(tmp_path / "runs", "sac", "HalfCheetah", 0, [500.0], env_id="HalfCheetah-v5")
    status, out, _ = run_main(capsys, tmp_path / "runs", "--out", tmp_path / "out", "--reps", "20", "--table", table)
    assert status == 0
    assert float(aggregates(tmp_path / "out")[("sac", "IQM")]["estimate"]) == 0.5
    assert "normalized score" in out
    clash = tmp_path / "clash.csv"
    clash.write_text("game,random,human\nPong,0,1\n")
    status, _, err = run_main(capsys, tmp_path / "runs", "--reps", "20", "--table", table, "--table", clash,
                              "--table", os.path.join(ROOT, "benchmark", "atari_human_random.csv"))
    assert status == 2 and "Pong has two different rows" in err


# ---- in sync with the agents ----
def test_a_real_dqn_run_is_aggregated(tmp_path, capsys):
    runs = tmp_path / "runs"
    flags = ["--env-id", "Breakout", "--impala-channels", "4", "8", "8", "--expert-hidden", "16", "--num-experts", "2",
             "--batch-size", "8", "--buffer-size", "1000", "--min-replay-history", "50", "--iteration-steps", "100",
             "--log-every", "100", "--total-frames", "1200", "--device", "cpu", "--exp-name", "tiny"]
    proc = run_script("dqn_moe_atari.py", flags, runs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = records(only_run_dir(runs))
    status, out, _ = run_main(capsys, runs, "--out", tmp_path / "out", "--reps", "20")
    assert status == 0
    scored = [r["episode_return"] for r in recs if "iteration" in r and r["episode_return"] is not None]
    assert final_scores(tmp_path / "out") == {("tiny", "Breakout", 1): scored[-1]}
    curve = read_csv(tmp_path / "out" / "curves.csv")
    first = next(i for i, r in enumerate(recs) if r.get("episode_return") is not None)
    assert [int(r["frames"]) for r in curve] == [r["frames"] for r in recs[first:-1]]
    assert "| Breakout | " in out
    # the run says what made it: this checkout's commit (if git knows it) and the agent file's hash
    provenance = json.load(open(os.path.join(only_run_dir(runs), "config.json")))["provenance"]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = git.stdout.strip() if git.returncode == 0 else None
    with open(os.path.join(ROOT, "dqn_moe_atari.py"), "rb") as f:
        assert provenance["code_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert provenance["git_commit"] == commit and provenance["device"] == "cpu"
    if commit:
        changed = subprocess.run(["git", "status", "--porcelain", "--", "dqn_moe_atari.py"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip()
        assert provenance["code_differs_from_commit"] == bool(changed)
    with open(ale_py.roms.get_rom_path("breakout"), "rb") as f:  # and the ROM it played
        assert provenance["rom_md5"] == hashlib.md5(f.read()).hexdigest() and provenance["ale_py"] == ale_py.__version__
    (row,) = read_csv(tmp_path / "out" / "runs.csv")
    assert row["git_commit"] == (commit or "") and row["code_sha256"] == provenance["code_sha256"]
    assert row["rom_md5"] == provenance["rom_md5"]
    assert aggregate.commit_of(provenance) in out


def test_provenance_is_listed_and_not_a_flag(tmp_path, capsys):
    """Runs of one label made by different commits and devices are one configuration (no warning);
    the runs table counts them per commit and device, and says which runs recorded none."""
    root = tmp_path / "runs"
    made = [{"git_commit": "a" * 40, "code_differs_from_commit": False, "device": "NVIDIA H100 80GB HBM3"},
            {"git_commit": "b" * 40, "code_differs_from_commit": True, "device": "NVIDIA H100 80GB HBM3"},
            {"git_commit": None, "code_sha256": "c" * 64, "device": "cpu"}, None]
    for seed, provenance in enumerate(made):
        write_run(root, "base", "Pong", seed, [raw("Pong", 0.1)], **({"provenance": provenance} if provenance else {}))
    status, out, err = run_main(capsys, root, "--out", tmp_path / "out", "--reps", "20")
    assert status == 0 and "differ in" not in err
    assert "aaaaaaa (1), bbbbbbb with changes (1), sha256 cccccccccccc (1), not recorded (1)" in out
    assert "NVIDIA H100 80GB HBM3 (2), cpu (1), not recorded (1)" in out


def test_runs_of_one_game_on_different_roms_are_warned_about(tmp_path, capsys):
    """Runs of one label and game that played other ROMs (md5) get a warning; other games and runs
    that recorded no ROM do not."""
    root = tmp_path / "runs"
    for seed, md5 in enumerate(["00ce0bdd" + "0" * 24, "83b8c01c" + "0" * 24, None]):
        write_run(root, "drq", "Pong", seed, [raw("Pong", 0.1)], **({"provenance": {"rom_md5": md5}} if md5 else {}))
        write_run(root, "drq", "Breakout", seed, [raw("Breakout", 0.1)], provenance={"rom_md5": "1" * 32})
    status, _, err = run_main(capsys, root, "--out", tmp_path / "out", "--reps", "20")
    (line,) = [line for line in err.splitlines() if "different ROMs" in line]
    assert status == 0 and "on Pong played 2 different ROMs (md5 00ce0bdd, 83b8c01c)" in line


def test_games_filter_and_wall_clock_axis(tmp_path, capsys):
    """--games keeps the named games only (figure 8's 20-game panel); --x hours puts the curves
    on the training wall clock, summed from each iteration's steps/s (figure 19)."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        for game in ("Pong", "Breakout", "Seaquest"):
            write_run(root, "fast", game, seed, [raw(game, 0.1), raw(game, 0.2)])
    hours = aggregate.training_hours([{"iteration": 0, "step": 1000, "sps": 500.0},
                                      {"iteration": 1, "step": 3000, "sps": 250.0}, {"final": True}], 2)
    assert hours == pytest.approx([2 / 3600, 10 / 3600])
    assert aggregate.training_hours([{"eval": True, "step": 5}], 1) == [None]
    status, _, _ = run_main(capsys, root, "--games", "Pong,ALE/Breakout-v5", "--x", "hours", "--reps", "20",
                            "--out", tmp_path / "out")
    assert status == 0
    runs = read_csv(tmp_path / "out" / "runs.csv")
    assert {r["game"] for r in runs if r["included"] == "True"} == {"Pong", "Breakout"}
    assert all(r["reason"] == "not in --games" for r in runs if r["game"] == "Seaquest")
    per_iteration = FRAMES // 4 / 500.0 / 3600  # write_run logs 500 steps/s
    assert [float(r["hours"]) for r in read_csv(tmp_path / "out" / "curves.csv")] == \
        pytest.approx([per_iteration, 2 * per_iteration])
    assert os.path.getsize(tmp_path / "out" / "curves.png") > 0
    status, _, err = run_main(capsys, root, "--games", "Zaxxon", "--out", tmp_path / "out2")
    assert status == 2 and "no run is of a game in --games" in err


# ---- two sets of our runs, game by game (benchmark/compare_runs.py) ----
def test_compare_runs_pairs_runs_of_the_same_game_and_seed(tmp_path, capsys):
    """Runs of one game and seed in both sets are pairs: the sign test counts the pairs the
    variant wins (ties left out), and with published runs the percentile changes get a Wilcoxon
    signed-rank test; runs without a partner are not paired."""
    variant, reference = tmp_path / "variant", tmp_path / "reference"
    for seed, (new, old) in enumerate([(30.0, 10.0), (50.0, 20.0), (60.0, 40.0), (5.0, 5.0), (70.0, 80.0)], start=1):
        write_run(variant, "new", "Pong", seed, [1.0], evals=[(100_000, new)])
        write_run(reference, "old", "Pong", seed, [1.0], evals=[(100_000, old)])
    write_run(variant, "new", "Pong", 9, [1.0], evals=[(100_000, 99.0)])  # no partner
    published = tmp_path / "published.json"
    published.write_text(json.dumps({"Pong": [float(i) for i in range(100)]}))
    summary = compare_runs.paired(compare_runs.final_scores([str(variant)]), compare_runs.final_scores([str(reference)]),
                                  rank_against_published.load_published(str(published)))
    assert [(p["seed"], p["variant"], p["reference"]) for p in summary["pairs"]] == [
        (1, 30.0, 10.0), (2, 50.0, 20.0), (3, 60.0, 40.0), (4, 5.0, 5.0), (5, 70.0, 80.0)]
    assert (summary["higher"], summary["differ"]) == (3, 4)
    assert summary["sign_p_value"] == pytest.approx(scipy.stats.binomtest(3, 4).pvalue)
    changes = [0.20, 0.30, 0.20, 0.0, -0.10]
    assert [p["percentile_change"] for p in summary["pairs"]] == pytest.approx(changes)
    assert summary["mean_percentile_change"] == pytest.approx(np.mean(changes))
    assert summary["wilcoxon_p_value"] == pytest.approx(scipy.stats.wilcoxon(changes).pvalue)
    assert compare_runs.main([str(variant), "--against", str(reference), "--published", str(published)]) == 0
    assert "5 pairs; the variant scored higher in 3 of the 4 that differ" in capsys.readouterr().out


def test_compare_runs_game_by_game(tmp_path, capsys):
    """A variant whose 4 runs all beat the reference's 3 on a game gets the smallest p that 4
    against 3 runs allow (2/35), interleaved runs a large one; games outside either set, and
    unfinished runs, are left out; published runs add each set's percentile among them."""
    variant, reference = tmp_path / "variant", tmp_path / "reference"
    for seed in range(4, 8):
        write_run(variant, "new", "Pong", seed, [1.0], evals=[(100_000, 10.0 + seed)])  # 14..17: above all
        write_run(variant, "new", "Breakout", seed, [1.0], evals=[(100_000, 2.0 * seed)])  # 8, 10, 12, 14
    write_run(variant, "new", "Seaquest", 4, [1.0], evals=[(100_000, 1.0)])  # not in the reference
    write_run(variant, "new", "Pong", 9, [1.0], finished=False)
    for seed in range(1, 4):
        write_run(reference, "old", "Pong", seed, [1.0], evals=[(100_000, float(seed))])
        write_run(reference, "old", "Breakout", seed, [1.0], evals=[(100_000, 7.0 + 2.0 * seed)])  # 9, 11, 13
    published = tmp_path / "published.json"
    published.write_text(json.dumps({"Pong": [float(i) for i in range(100)]}))
    rows = compare_runs.compare(compare_runs.final_scores([str(variant)]), compare_runs.final_scores([str(reference)]),
                                rank_against_published.load_published(str(published)))
    by_game = {r["game"]: r for r in rows}
    assert sorted(by_game) == ["Breakout", "Pong"]
    pong, breakout = by_game["Pong"], by_game["Breakout"]
    assert pong["variant_scores"] == [14.0, 15.0, 16.0, 17.0] and pong["reference_mean"] == 2.0
    assert pong["p_value"] == pytest.approx(2 / 35) and breakout["p_value"] == pytest.approx(
        scipy.stats.mannwhitneyu([8, 10, 12, 14], [9, 11, 13], method="exact").pvalue)
    assert breakout["p_value"] > 0.5 and pong["holm_p_value"] == pytest.approx(min(1.0, 2 * 2 / 35))
    assert pong["variant_percentile"] == pytest.approx(np.mean([14.5, 15.5, 16.5, 17.5]) / 100)
    assert pong["reference_p_published"] == pytest.approx(
        rank_against_published.rank_sum_test(np.array([1.0, 2.0, 3.0]), np.arange(100.0)))
    assert "published_mean" not in breakout
    pairs = compare_runs.paired(compare_runs.final_scores([str(variant)]), compare_runs.final_scores([str(reference)]),
                                rank_against_published.load_published(str(published)))
    assert pairs["pairs"] == [] and pairs["differ"] == 0 and "mean_percentile_change" not in pairs
    out_json = tmp_path / "rows.json"
    assert compare_runs.main([str(variant), "--against", str(reference), "--published", str(published),
                              "--out", str(out_json)]) == 0
    assert "| Pong | 14.0, 15.0, 16.0, 17.0 | 15.5 | 1.0, 2.0, 3.0 | 2.0 | 0.057 |" in capsys.readouterr().out
    assert len(json.loads(out_json.read_text())) == 2
    assert compare_runs.main([str(variant), "--against", str(reference), "--published", str(published),
                              "--plot", str(tmp_path / "p.png")]) == 0 and (tmp_path / "p.png").stat().st_size > 0
    assert compare_runs.main([str(variant), "--against", str(reference), "--plot", str(tmp_path / "q.png")]) == 2
    assert "pass --published too" in capsys.readouterr().err
    write_run(tmp_path / "other", "x", "Alien", 1, [1.0], evals=[(100_000, 1.0)])
    assert compare_runs.main([str(variant), "--against", str(tmp_path / "other")]) == 2
    assert "no game in common" in capsys.readouterr().err


# ---- our runs among published runs (benchmark/rank_against_published.py) ----
def test_percentiles_among_published_runs(tmp_path, capsys):
    """Each run's percentile among the published runs of its game (ties half), their mean and a
    KS test: runs drawn like the published ones are not rejected, runs that all beat them are."""
    published = {"Pong": [float(i) for i in range(1, 101)], "ALE/Breakout-v5": [5.0] * 100}
    path = tmp_path / "published.json"
    path.write_text(json.dumps(published))
    assert rank_against_published.percentile_among(50.5, np.arange(1, 101)) == 0.5
    assert rank_against_published.percentile_among(5.0, np.full(100, 5.0)) == 0.5
    same, better = tmp_path / "same", tmp_path / "better"
    for seed in range(20):  # ours drawn over the published range, on a grid: percentiles 0.025 .. 0.975
        write_run(same, "ours", "Pong", seed, [1.0], evals=[(100_000, 5.0 * seed + 3.0)])
        write_run(better, "ours", "Pong", seed, [1.0], evals=[(100_000, 200.0 + seed)])
    write_run(same, "ours", "Breakout", 0, [1.0], evals=[(100_000, 5.0)])
    write_run(same, "ours", "Seaquest", 0, [1.0], evals=[(100_000, 9.0)])  # no published runs: left out
    write_run(same, "ours", "Pong", 99, [1.0], finished=False)  # unfinished: left out
    rows, s = rank_against_published.rank([str(same)], rank_against_published.load_published(str(path)))
    assert [r["game"] for r in rows] == ["Breakout"] + ["Pong"] * 20
    assert [r["percentile"] for r in rows if r["game"] == "Pong"] == pytest.approx([0.025 + 0.05 * i for i in range(20)])
    assert s["mean_percentile"] == pytest.approx(np.mean([r["percentile"] for r in rows]))
    assert s["standard_error_if_same"] == pytest.approx(1 / np.sqrt(12 * 21)) and s["ks_p_value"] > 0.5
    assert s["unfinished"] == ["Pong seed 99"]
    assert rank_against_published.main([str(same), "--published", str(path)]) == 0
    assert "warning: 1 run(s) without a final score left out (Pong seed 99)" in capsys.readouterr().err
    status = rank_against_published.main([str(better), "--published", str(path), "--out", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert status == 0 and "mean percentile 1.000" in out and "| Pong | 0 | 200.0 | 50.5 |" in out
    assert len(read_csv(tmp_path / "r.csv")) == 20
    assert rank_against_published.main([str(same), "--published", str(tmp_path / "missing.json")]) == 2
    assert "cannot read --published" in capsys.readouterr().err


def test_aggregates_against_published_runs_at_our_sample_size(tmp_path):
    """Our aggregates sit inside the range of equally many published runs per game when ours are
    published runs, and above all of it when every run of ours beats theirs; the plot is written."""
    rng = np.random.default_rng(0)
    games = ["Pong", "Breakout", "Seaquest", "Alien"]
    tables = aggregate.load_tables(aggregate.default_tables())
    published = {aggregate.table_key(g): rng.normal(100.0 * (i + 1), 20.0, 100) for i, g in enumerate(games)}

    def rows_of(scores_of):
        return [{"game": g, "seed": s, "score": float(scores_of(g, s)), "percentile": 0.5, "published_mean": 1.0,
                 "published_p5": 0.0, "published_p95": 2.0} for g in games for s in range(3)]

    same = rank_against_published.compare_aggregates(rows_of(lambda g, s: published[aggregate.table_key(g)][s]),
                                                     published, tables, reps=300)
    assert same["runs_per_game"] == 3 and same["published_runs_per_game"] == 100
    iqm, gap = same["ours"][0][0], same["ours"][0][3]
    assert same["expected"][0, 0] <= iqm <= same["expected"][1, 0] and same["expected"][0, 3] <= gap <= same["expected"][1, 3]
    best = rank_against_published.compare_aggregates(rows_of(lambda g, s: published[aggregate.table_key(g)].max() + 1 + s),
                                                     published, tables, reps=300)
    assert best["share_of_draws_below"][0] == 1.0 and best["share_of_draws_below"][3] == 0.0  # gap: lower is better
    summary = {"mean_percentile": 0.5, "runs": 12, "ks_p_value": 1.0}
    rank_against_published.plot_against_published(rows_of(lambda g, s: 1.0), tables, summary, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_aggregates_of_all_runs_with_unequal_runs_per_game():
    """With unequal runs per game, all of ours go into the aggregates (IQM and optimality gap
    pooled, median and mean of the games' means: rliable's with equal numbers), against draws of as
    many published runs per game: inside their range when ours are published runs, above it all
    when ours beat every published run."""
    rng = np.random.default_rng(1)
    matrix = rng.normal(0.5, 0.4, size=(3, 5))
    assert rank_against_published.ragged_metrics(list(matrix.T)) == pytest.approx(aggregate.aggregate_metrics(matrix))
    games = ["Pong", "Breakout", "Seaquest", "Alien"]
    tables = aggregate.load_tables(aggregate.default_tables())
    published = {aggregate.table_key(g): rng.normal(100.0 * (i + 1), 20.0, 100) for i, g in enumerate(games)}
    seeds = {"Pong": 1, "Breakout": 3, "Seaquest": 2, "Alien": 1}

    def rows_of(scores_of):
        return [{"game": g, "seed": s, "score": float(scores_of(g, s))} for g in games for s in range(seeds[g])]

    same = rank_against_published.compare_all_runs(rows_of(lambda g, s: published[aggregate.table_key(g)][s]),
                                                   published, tables, reps=300)
    assert same["runs"] == 7
    assert np.all(same["expected"][0] <= same["ours"]) and np.all(same["ours"] <= same["expected"][1])
    best = rank_against_published.compare_all_runs(rows_of(lambda g, s: published[aggregate.table_key(g)].max() + 1 + s),
                                                   published, tables, reps=300)
    assert list(best["share_of_draws_below"]) == [1.0, 1.0, 1.0, 0.0]  # the gap: lower is better


def test_rank_sum_test_is_exact_with_and_without_ties():
    """The rank-sum test's p-value is the exact two-sided Mann-Whitney one without ties, the exact
    permutation one with ties, and 2 / C(n + m, m) when all m of ours lie below all n published."""
    rng = np.random.default_rng(2)
    for m in (1, 2, 3):
        ours, theirs = rng.normal(0.8, 1.0, m), rng.normal(0.0, 1.0, 30)
        assert rank_against_published.rank_sum_test(ours, theirs) == pytest.approx(
            scipy.stats.mannwhitneyu(ours, theirs, method="exact").pvalue)
    ours, theirs = np.array([0.0, 0.0, 21.0]), np.array([0.0, 21.0, 21.0, 22.0, 0.0, 21.0])  # Freeway-like ties

    def rank_sum(x, y):
        return scipy.stats.rankdata(np.concatenate([x, y]))[:len(x)].sum()
    exact = scipy.stats.permutation_test((ours, theirs), rank_sum, permutation_type="independent", n_resamples=np.inf)
    assert rank_against_published.rank_sum_test(ours, theirs) == pytest.approx(exact.pvalue)
    assert rank_against_published.rank_sum_test(np.array([1.0, 2.0, 3.0]), np.arange(10.0, 110.0)) == pytest.approx(
        2 / scipy.special.comb(103, 3))
    assert rank_against_published.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_games_that_differ_and_seed_effect(capsys):
    """The game where every run of ours lies below every published run is flagged after Holm's
    adjustment, games whose runs are published runs are not; seeds that score higher on every game
    give a small p-value for a seed effect, exchangeable ones a large one, a single seed none."""
    rng = np.random.default_rng(3)
    games = ["Pong", "Breakout", "Seaquest", "Alien", "Qbert"]
    published = {aggregate.table_key(g): rng.normal(100.0, 20.0, 100) for g in games}

    def rows_of(score_of, seeds=(1, 2, 3)):
        rows = []
        for g in games:
            theirs = published[aggregate.table_key(g)]
            for s in seeds:
                score = float(score_of(g, s, theirs))
                rows.append({"game": g, "seed": s, "score": score,
                             "percentile": rank_against_published.percentile_among(score, theirs)})
        return rows

    rows = rows_of(lambda g, s, theirs: theirs.min() - s if g == "Qbert" else theirs[10 * s])
    per_game = {r["game"]: r for r in rank_against_published.games_that_differ(rows, published)}
    assert per_game["Qbert"]["holm_p_value"] < 0.05 and per_game["Qbert"]["mean_percentile"] == 0.0
    assert all(per_game[g]["holm_p_value"] > 0.05 for g in games if g != "Qbert")
    rank_against_published.print_games_that_differ(list(per_game.values()), None)
    assert "| Qbert | 3 | 0.00 |" in capsys.readouterr().out
    graded = rows_of(lambda g, s, theirs: np.sort(theirs)[[5, 50, 95][s - 1] + games.index(g)])  # seed 3 best on every game
    effect = rank_against_published.seed_effect(graded, reps=500)
    assert effect["seeds"] == [1, 2, 3] and effect["games"] == 5 and effect["p_value"] < 0.02
    assert effect["mean_percentile"][0] < effect["mean_percentile"][1] < effect["mean_percentile"][2]
    mixed = rows_of(lambda g, s, theirs: np.sort(theirs)[[5, 50, 95][(s + games.index(g)) % 3]])  # each seed best somewhere
    assert rank_against_published.seed_effect(mixed, reps=500)["p_value"] > 0.5
    assert rank_against_published.seed_effect(rows_of(lambda g, s, theirs: theirs[0], seeds=(1,))) is None
