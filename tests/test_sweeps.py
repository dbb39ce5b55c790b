"""The figure sweeps (benchmark/fig*.sh): each one's dry run lists its commands; the game lists
are the paper's (appendix A); every configuration parses and passes the agent's own checks; the
environment variables scale a sweep down."""

import collections
import glob
import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import gymnasium as gym
import pytest
import tyro

from agent_runs import ROOT

SWEEPS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmark", "fig*.sh"))) + ["atari100k_fidelity.sh"]
PROBES = ["atari100k_protocol_probe.sh", "dopamine_curves.sh", "adam_eps_probe.sh", "eval_epsilon_probe.sh"]  # a few games and seeds, not the paper's lists
CAPTURED = "--compile --cudagraphs --no-torch-deterministic"
COMMON = os.path.join(ROOT, "benchmark", "sweep_common.sh")


def dry_run(sweep, tmp_path, **env):
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", sweep), "--dry-run"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "RUNS_DIR": str(tmp_path), **env})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines()]
    assert commands and all(c[0] == "python" for c in commands)
    return commands


def flag(tokens, name):
    return tokens[tokens.index(name) + 1]


def game_list(name):
    out = subprocess.run(["bash", "-c", f'source "{COMMON}" >/dev/null; echo ${name}'], capture_output=True, text=True)
    return out.stdout.split()


def test_the_papers_game_lists_are_real_ale_games():
    import ale_py
    gym.register_envs(ale_py)
    lists = {n: game_list(n) for n in ("GAMES_20", "GAMES_26", "GAMES_60")}
    assert {n: len(set(g)) for n, g in lists.items()} == {"GAMES_20": 20, "GAMES_26": 26, "GAMES_60": 60}
    assert all(len(g) == len(set(g)) for g in lists.values())
    assert set(lists["GAMES_26"]) <= set(lists["GAMES_60"]) and set(lists["GAMES_20"]) <= set(lists["GAMES_60"])
    for game in lists["GAMES_60"]:
        assert f"ALE/{game}-v5" in gym.registry, game


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_lists_every_game_and_seed_of_each_configuration(sweep, tmp_path):
    commands = dry_run(sweep, tmp_path)
    by_config = collections.defaultdict(set)
    for tokens in commands:
        by_config[flag(tokens, "--exp-name")].add((flag(tokens, "--env-id"), flag(tokens, "--seed")))
        assert tokens[1].endswith(".py") and os.path.isfile(os.path.join(ROOT, tokens[1]))
    assert len(commands) == sum(len(runs) for runs in by_config.values()), "no command twice"
    seeds = {"fig19_wall_time.sh": 3, "atari100k_fidelity.sh": 3}.get(sweep, 5)
    for name, runs in by_config.items():
        games = {g for g, _ in runs}
        assert {s for _, s in runs} == {str(s) for s in range(1, seeds + 1)}, name
        assert len(runs) == len(games) * seeds, f"{name}: every game with every seed"
        assert len(games) in (20, 26, 60), name
    assert not os.listdir(tmp_path), "a dry run starts nothing"


@pytest.mark.parametrize("sweep", SWEEPS + PROBES)
def test_every_configuration_parses_and_passes_the_agents_checks(sweep, tmp_path):
    configs = {}
    for tokens in dry_run(sweep, tmp_path, SEEDS="1", GAMES="Pong"):
        configs[flag(tokens, "--exp-name")] = tokens
    for name, tokens in configs.items():
        module = load_agent(tokens[1])
        try:
            args = tyro.cli(module.Args, args=tokens[2:])
            module.validate_args(args)
            if hasattr(module, "validate_atari100k_args"):
                module.validate_atari100k_args(args)
        except SystemExit as e:
            pytest.fail(f"{sweep}: {name} does not parse: {e}")
        assert args.exp_name == name and args.env_id == "Pong"


def load_agent(script):
    return importlib.import_module(script[:-3])


def test_figure_1_design(tmp_path):
    configs = {flag(t, "--exp-name"): t for t in dry_run("fig1_expert_scaling.sh", tmp_path, SEEDS="1")}
    assert len(configs) == 2 * 3 * 4, "DQN and Rainbow x (baseline, Soft MoE, Top1) x 1/2/4/8 experts"
    for e in (2, 4, 8):
        baseline = configs[f"rainbow_none_x{e}"]
        assert "--scale-hidden" in baseline and flag(baseline, "--num-experts") == str(e)
        assert flag(configs[f"dqn_soft_e{e}"], "--moe") == "soft" and flag(configs[f"dqn_top1_e{e}"], "--moe") == "top1"
    assert all(flag(t, "--total-frames") == "200000000" for t in configs.values())


def test_fidelity_sweep_goes_seed_by_seed_and_continues_the_committed_runs(tmp_path):
    """atari100k_fidelity.sh lists whole seeds first (DrQ(eps)'s baseline on the 26 games opens
    it), and the runs committed under benchmark/results are its own commands with the captured
    flags, by default or in the published agent's setting (PROTOCOL=2021 ROM_DIR=..., with or
    without LIFE_LOSS=cut_2021): continuing the sweep there starts none of them again. The ROM folder is the machine's, so the
    comparison leaves out the folder of each --rom-file."""
    commands = dry_run("atari100k_fidelity.sh", tmp_path)
    seeds = [int(flag(t, "--seed")) for t in commands]
    assert seeds == sorted(seeds) and len(commands) == 3 * 2 * 3 * 26
    assert {flag(t, "--exp-name") for t in commands[:26]} == {"drq_none_100k"}
    assert {flag(t, "--num-experts") for t in commands if "--num-experts" in t} == {"4"}
    roms = tmp_path / "roms"
    roms.mkdir()
    for game in "amidar assault bank_heist battle_zone demon_attack gopher krull kung_fu_master ms_pacman road_runner".split():
        (roms / f"{game}.bin").write_bytes(b"rom")

    def without_rom_folder(command: str) -> str:
        return re.sub(r"--rom-file \S*/", "--rom-file ", command)

    published_setting = dry_run("atari100k_fidelity.sh", tmp_path, EXTRA=CAPTURED, PROTOCOL="2021", ROM_DIR=str(roms),
                                AGENTS="drq", NETWORKS="none")
    assert len(published_setting) == 78 and sum("--rom-file" in t for t in published_setting) == 30
    published_cut = dry_run("atari100k_fidelity.sh", tmp_path, EXTRA=CAPTURED, PROTOCOL="2021", ROM_DIR=str(roms),
                            LIFE_LOSS="cut_2021", AGENTS="drq", NETWORKS="none")
    listed = {without_rom_folder(shlex.join(t))
              for t in dry_run("atari100k_fidelity.sh", tmp_path, EXTRA=CAPTURED) + published_setting + published_cut}
    committed = os.path.join(ROOT, "benchmark", "results", "atari100k_fidelity")
    states = glob.glob(os.path.join(committed, "*", "state.json"))
    assert states
    for path in states:
        with open(path) as f:
            state = json.load(f)
        assert state["status"] == "done" and without_rom_folder(state["command"]) in listed, path
        assert glob.glob(os.path.join(os.path.dirname(path), "*", "summary.jsonl")), path


COMMITTED = {  # folder under benchmark/results: the sweep and its variables that listed the runs, and how many
    "fig12_16": ("fig12_16_atari100k.sh", dict(SEEDS="1", SCHEDULES="100k", EXPERTS="4", AGENTS="drq"), 3 * 26),
    "adam_eps_probe": ("adam_eps_probe.sh", dict(SEEDS="2"), 5 * 2),
}


@pytest.mark.parametrize("folder", sorted(COMMITTED))
def test_committed_runs_are_their_sweeps_own(folder, tmp_path):
    """The runs committed under benchmark/results/<folder> are their sweep's own commands, with the
    captured flags, and finished: continuing the sweep in a copy of that folder starts none of
    them again (fig12_16: DrQ(eps) Impala at 100k steps, 4 experts; adam_eps_probe: Nature CNN
    Soft MoE-4 with Adam's epsilon 1e-5)."""
    sweep, variables, count = COMMITTED[folder]
    listed = {shlex.join(t) for t in dry_run(sweep, tmp_path, EXTRA=CAPTURED, **variables)}
    assert len(listed) == count
    states = glob.glob(os.path.join(ROOT, "benchmark", "results", folder, "*", "state.json"))
    assert states
    for path in states:
        with open(path) as f:
            state = json.load(f)
        assert state["status"] == "done" and state["command"] in listed, path
        assert glob.glob(os.path.join(os.path.dirname(path), "*", "summary.jsonl")), path


def test_committed_eval_epsilon_probe_runs_are_its_own(tmp_path):
    """benchmark/results/eval_epsilon_probe: its savemodel runs are the probe's commands (seeds 1-2,
    captured flags), and its evaleps runs are what VARIANTS=evaleps lists for those runs' networks
    (their --eval-model paths taken within the sweep folder, which was the device's); all finished."""
    committed = os.path.join(ROOT, "benchmark", "results", "eval_epsilon_probe")
    states = {os.path.basename(os.path.dirname(p)): json.load(open(p))
              for p in glob.glob(os.path.join(committed, "*", "state.json"))}
    assert all(state["status"] == "done" for state in states.values())
    saved = {shlex.join(t) for t in dry_run("eval_epsilon_probe.sh", tmp_path, SEEDS="1 2", EXTRA=CAPTURED)}
    trained = {run for run, state in states.items() if state["command"] in saved}
    assert len(saved) == len(trained) == 4
    for run in trained:  # stand-ins for the networks, which are not committed
        for folder in glob.glob(os.path.join(committed, run, "*", "")):
            stand_in = tmp_path / "eval_epsilon_probe" / run / os.path.basename(os.path.dirname(folder))
            stand_in.mkdir(parents=True)
            (stand_in / "model.pt").write_bytes(b"")

    def within_sweep(command):
        tokens = shlex.split(command)
        i = tokens.index("--eval-model") + 1
        tokens[i] = os.path.join(*tokens[i].split(os.sep)[-3:])
        return tuple(tokens)
    listed = {within_sweep(shlex.join(t)) for t in dry_run("eval_epsilon_probe.sh", tmp_path, SEEDS="1 2", EXTRA=CAPTURED,
                                                           VARIANTS="evaleps")}
    evaluated = {within_sweep(state["command"]) for run, state in states.items() if run not in trained}
    assert len(listed) == 4 and evaluated == listed


def test_adam_eps_probe_names_its_epsilon_and_refuses_a_bad_one(tmp_path):
    commands = dry_run("adam_eps_probe.sh", tmp_path, SEEDS="1", GAMES="Pong", ADAM_EPS="1e-6")
    assert [(flag(t, "--exp-name"), flag(t, "--adam-eps"), flag(t, "--moe")) for t in commands] == \
        [("drq_soft_e4_eps1e-6_100k", "1e-6", "soft")]
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "adam_eps_probe.sh"), "--dry-run"],
                         capture_output=True, text=True, env={**os.environ, "ADAM_EPS": "small", "RUNS_DIR": str(tmp_path)})
    assert out.returncode == 2 and "ADAM_EPS takes a positive number" in out.stderr and not os.listdir(tmp_path)


def test_variables_scale_a_sweep_down(tmp_path):
    commands = dry_run("fig1_expert_scaling.sh", tmp_path, SEEDS="2 7", GAMES="Pong Breakout", FRAMES="100000",
                       AGENTS="dqn", EXPERTS="2", EXTRA="--device cpu")
    assert {(flag(t, "--env-id"), flag(t, "--seed")) for t in commands} == \
        {(g, s) for g in ("Pong", "Breakout") for s in ("2", "7")}
    assert len(commands) == 3 * 4 and all(flag(t, "--total-frames") == "100000" and t[-2:] == ["--device", "cpu"]
                                          for t in commands)
    steps = {flag(t, "--total-steps") for t in dry_run("fig12_16_atari100k.sh", tmp_path, SEEDS="1", GAMES="Pong",
                                                        SCHEDULES="100k 50M", FRAMES_50M="800000")}
    assert steps == {"100000", "200000"}
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "fig12_16_atari100k.sh"), "--dry-run"],
                         capture_output=True, text=True, env={**os.environ, "SCHEDULES": "1M", "RUNS_DIR": str(tmp_path)})
    assert out.returncode != 0 and "SCHEDULES takes 100k and 50M (got 1M)" in out.stderr


@pytest.mark.parametrize("seeds, expected", [("3", "1 2 3"), ("2-2", "2"), ("4-6", "4 5 6"), ("3 7", "3 7"), (" 2", "2")])
def test_seeds_take_a_count_a_range_or_a_list(tmp_path, seeds, expected):
    commands = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS=seeds, GAMES="Pong", AGENTS="drq", NETWORKS="none")
    assert [flag(t, "--seed") for t in commands] == expected.split()


def test_a_sweep_runs_through_the_launcher(tmp_path):
    """A tiny Atari 100k sweep, end to end on the CPU: the launcher runs it and a second call
    finds it done."""
    env = {"RUNS_DIR": str(tmp_path), "SEEDS": "1", "GAMES": "Pong", "SCHEDULES": "100k", "FRAMES_100K": "600",
           "AGENTS": "drq", "EXPERTS": "2",
           "EXTRA": "--device cpu --impala-channels 4 8 8 --expert-hidden 16 --batch-size 8 --min-replay-history 100 "
                    "--iteration-steps 100 --eval-episodes 1 --max-episode-frames 400"}
    sweep = os.path.join(ROOT, "benchmark", "fig12_16_atari100k.sh")
    out = subprocess.run(["bash", sweep, "--jobs", "2", "--threads-per-run", "1"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **env})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 done, 0 failed" in out.stdout
    summaries = glob.glob(os.path.join(tmp_path, "fig12_16", "*", "*", "summary.jsonl"))
    assert len(summaries) == 3
    again = subprocess.run(["bash", sweep], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert again.returncode == 0 and "3 of 3 run(s) done" in again.stdout
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmark", "aggregate.py"),
                          os.path.join(tmp_path, "fig12_16"), "--baseline", "drq_none_impala_100k", "--reps", "20"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in ("drq_none_impala_100k", "drq_soft_e2_impala_100k", "drq_top1_e2_impala_100k"):
        assert name in out.stdout


@pytest.mark.parametrize("short, runs", [("0", 2 * 2 * 4 * 3), ("1", 2 * 2)])
def test_num_envs_check_compares_only_the_number_of_environments(tmp_path, short, runs):
    """benchmark/check_num_envs.sh: each agent with 1 and 16 environments, otherwise the same
    flags, on every game with every seed (agents x K x games x seeds; SHORT=1: DQN only, 2
    games, 1 seed); every command parses and passes the agent's checks."""
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "check_num_envs.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "RUNS_DIR": str(tmp_path), "SHORT": short})
    assert out.returncode == 0, out.stderr
    commands = [shlex.split(line) for line in out.stdout.splitlines() if line.startswith("python")]
    assert len(commands) == runs
    without_k = collections.defaultdict(set)
    for tokens in commands:
        k = flag(tokens, "--num-envs")
        rest = [t for i, t in enumerate(tokens) if t != "--num-envs" and tokens[i - 1] != "--num-envs"
                and t != "--exp-name" and tokens[i - 1] != "--exp-name"]
        without_k[tuple(rest)].add(k)
        module = load_agent(tokens[1])
        args = tyro.cli(module.Args, args=tokens[2:])
        module.validate_args(args)
        assert args.num_envs == int(k) and flag(tokens, "--exp-name").endswith(f"_k{k}")
    assert all(ks == {"1", "16"} for ks in without_k.values())
    assert not os.listdir(tmp_path), "a dry run starts nothing"


PROBE_VARIANTS = {"drq_2021_100k": ["--shift-per", "batch", "--noop-unit", "frame"], "drq_fp32_100k": ["--no-tf32"],
                  "drq_shiftbatch_100k": ["--shift-per", "batch"], "drq_noopframe_100k": ["--noop-unit", "frame"]}


def test_protocol_probe_is_the_fidelity_sweeps_command_with_flags_added(tmp_path):
    """The probe: on each game and seed, the fidelity sweep's own DrQ(eps) command with the 2021
    code's flags, both halves of them alone, and --no-tf32, each under its own name; the 16 runs
    committed first (2021 and fp32 on Asterix and BankHeist) keep their commands."""
    commands = dry_run("atari100k_protocol_probe.sh", tmp_path)
    runs = {(flag(t, "--exp-name"), flag(t, "--env-id"), flag(t, "--seed")): t for t in commands}
    assert len(runs) == len(commands) == 64
    games = "Asterix BankHeist Assault CrazyClimber"
    sweep = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="4 5 6 7", AGENTS="drq", NETWORKS="none", GAMES=games)
    reference = {(flag(t, "--env-id"), flag(t, "--seed")): t for t in sweep}
    assert len(reference) == 16
    for name, extra in PROBE_VARIANTS.items():
        for (game, seed), base in reference.items():
            probe = runs[(name, game, seed)]
            renamed = [name if t == "drq_none_100k" else t for t in base]
            assert probe[:len(renamed)] == renamed and probe[len(renamed):] == extra
    first = dry_run("atari100k_protocol_probe.sh", tmp_path, VARIANTS="2021 fp32", GAMES="Asterix BankHeist", EXTRA=CAPTURED)
    committed = {json.load(open(p))["command"] for p in glob.glob(
        os.path.join(ROOT, "benchmark", "results", "atari100k_protocol_probe", "*", "state.json"))}
    assert len(first) == 16 and {shlex.join(t) for t in first} <= committed
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "atari100k_protocol_probe.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "VARIANTS": "2022"})
    assert out.returncode != 0 and "VARIANTS takes 2021, fp32, shiftbatch, noopframe, oldrom, savemodel and swapeval" in out.stderr


def test_protocol_probe_runs_the_games_from_atari_py_roms(tmp_path):
    """VARIANTS=oldrom: the 10 games whose ROM atari-py 0.2.6 shipped differs, each with the
    fidelity sweep's command and --rom-file (that game's ROM in ROM_DIR, full path) added;
    without the ROM it fails before launching anything."""
    games = "Amidar Assault BankHeist BattleZone DemonAttack Gopher Krull KungFuMaster MsPacman RoadRunner".split()
    snake = {"BankHeist": "bank_heist", "BattleZone": "battle_zone", "DemonAttack": "demon_attack",
             "KungFuMaster": "kung_fu_master", "MsPacman": "ms_pacman", "RoadRunner": "road_runner"}
    for game in games:
        (tmp_path / f"{snake.get(game, game.lower())}.bin").write_bytes(b"rom")
    commands = dry_run("atari100k_protocol_probe.sh", tmp_path, VARIANTS="oldrom", ROM_DIR=str(tmp_path))
    sweep = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="4 5 6 7", AGENTS="drq", NETWORKS="none", GAMES=" ".join(games))
    assert len(commands) == len(sweep) == 40
    by_run = {(flag(t, "--env-id"), flag(t, "--seed")): t for t in commands}
    for base in sweep:
        game = flag(base, "--env-id")
        rom = str(tmp_path / f"{snake.get(game, game.lower())}.bin")
        assert by_run[(game, flag(base, "--seed"))] == [("drq_oldrom_100k" if x == "drq_none_100k" else x)
                                                       for x in base] + ["--rom-file", rom]
    (tmp_path / "krull.bin").unlink()
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "atari100k_protocol_probe.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "VARIANTS": "oldrom", "ROM_DIR": str(tmp_path), "RUNS_DIR": str(tmp_path)})
    assert out.returncode != 0 and "holding krull.bin" in out.stderr


def test_protocol_probe_swaps_the_no_op_unit_between_training_and_evaluation(tmp_path):
    """VARIANTS=savemodel: both no-op units with --save-model; VARIANTS=swapeval: one command per
    finished savemodel run of the games and seeds asked for, evaluating its model.pt (full path)
    under the other unit with the training run's seed; each parses and passes the agent's checks;
    with no such run it fails and says to run savemodel first."""
    saved = dry_run("atari100k_protocol_probe.sh", tmp_path, VARIANTS="savemodel", GAMES="Asterix")
    assert [(flag(t, "--exp-name"), flag(t, "--seed")) for t in saved] == (
        [("drq_savestep_100k", s) for s in "4567"] + [("drq_saveframe_100k", s) for s in "4567"])
    assert all(t[-1] == "--save-model" for t in saved) and all(flag(t, "--noop-unit") == "frame" for t in saved[4:])
    probe = tmp_path / "atari100k_protocol_probe"
    models = {}
    for trained, game, seed in [("drq_savestep_100k", "Asterix", 4), ("drq_saveframe_100k", "Asterix", 6),
                                ("drq_savestep_100k", "Pong", 4), ("drq_savestep_100k", "Asterix", 9)]:
        run = probe / f"{trained}__{game}__s{seed}__0123abcd" / f"{game}__{trained}__none4__{seed}__1"
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(b"weights")
        models[(trained, game, seed)] = str(run / "model.pt")
    swapped = dry_run("atari100k_protocol_probe.sh", tmp_path, VARIANTS="swapeval", GAMES="Asterix")
    assert sorted((flag(t, "--exp-name"), flag(t, "--seed"), flag(t, "--noop-unit"), flag(t, "--eval-model"))
                  for t in swapped) == [
        ("drq_saveframe_evalstep_100k", "6", "step", models[("drq_saveframe_100k", "Asterix", 6)]),
        ("drq_savestep_evalframe_100k", "4", "frame", models[("drq_savestep_100k", "Asterix", 4)])]
    module = load_agent("drq_moe_atari100k.py")
    for t in swapped:
        module.validate_atari100k_args(tyro.cli(module.Args, args=t[2:]))
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "atari100k_protocol_probe.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "VARIANTS": "swapeval", "GAMES": "Breakout", "RUNS_DIR": str(tmp_path)})
    assert out.returncode != 0 and "run VARIANTS=savemodel first" in out.stderr


def test_eval_epsilon_probe_evaluates_each_saved_network_at_the_training_epsilon(tmp_path):
    """VARIANTS=savemodel: the fidelity sweep's Nature CNN Soft MoE-4 command with --save-model;
    VARIANTS=evaleps: one command per finished savemodel run of the games and seeds asked for,
    evaluating its model.pt (full path) with --eval-epsilon and the training run's seed; each
    parses and passes the agent's checks; a bad epsilon, or no such run, fails before anything."""
    saved = dry_run("eval_epsilon_probe.sh", tmp_path)
    sweep = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1 2 3", AGENTS="drq", NETWORKS="soft", GAMES="Hero Kangaroo")
    assert len(saved) == len(sweep) == 6
    assert sorted(saved) == sorted(["drq_soft_e4_save_100k" if x == "drq_soft_e4_100k" else x for x in t] + ["--save-model"]
                                   for t in sweep)
    probe = tmp_path / "eval_epsilon_probe"
    models = {}
    for game, seed in [("Hero", 1), ("Kangaroo", 3), ("Pong", 1), ("Hero", 7)]:
        run = probe / f"drq_soft_e4_save_100k__{game}__s{seed}__0123abcd" / f"{game}__drq_soft_e4_save_100k__soft4__{seed}__1"
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(b"weights")
        models[(game, seed)] = str(run / "model.pt")
    evals = dry_run("eval_epsilon_probe.sh", tmp_path, VARIANTS="evaleps", EVAL_EPSILON="0.05")
    assert sorted((flag(t, "--exp-name"), flag(t, "--env-id"), flag(t, "--seed"), flag(t, "--eval-epsilon"),
                   flag(t, "--eval-model")) for t in evals) == [
        ("drq_soft_e4_save_evaleps0.05_100k", "Hero", "1", "0.05", models[("Hero", 1)]),
        ("drq_soft_e4_save_evaleps0.05_100k", "Kangaroo", "3", "0.05", models[("Kangaroo", 3)])]
    module = load_agent("drq_moe_atari100k.py")
    for t in evals:
        args = tyro.cli(module.Args, args=t[2:])
        module.validate_atari100k_args(args)
        assert (args.moe, args.num_experts, args.encoder) == ("soft", 4, "nature")
    for env, message in [({"VARIANTS": "evaleps", "GAMES": "Breakout"}, "run VARIANTS=savemodel first"),
                         ({"EVAL_EPSILON": "1e-2"}, "EVAL_EPSILON takes a probability")]:
        out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "eval_epsilon_probe.sh"), "--dry-run"],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "RUNS_DIR": str(tmp_path), **env})
        assert out.returncode != 0 and message in out.stderr, env


def test_fidelity_sweep_in_the_2021_protocol(tmp_path):
    """PROTOCOL=2021: every configuration of the sweep with the 2021 code's flags (DrQ(eps)'s
    shift per batch, DER has no augmentation to shift) and _2021 in its name; each parses and
    passes its agent's checks."""
    current = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES="Pong")
    old = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES="Pong", PROTOCOL="2021")
    assert len(old) == len(current) == 6
    for base, t in zip(current, old):
        name = flag(base, "--exp-name")
        new_name = name.replace("_none", "").replace("_100k", "_2021_100k")
        extra = (["--shift-per", "batch"] if base[1].startswith("drq") else []) + ["--noop-unit", "frame"]
        assert t == [new_name if x == name else x for x in base] + extra
        module = load_agent(t[1])
        module.validate_args(tyro.cli(module.Args, args=t[2:]))
    assert {flag(t, "--exp-name") for t in old} >= {"drq_2021_100k", "der_2021_100k", "drq_soft_e4_2021_100k"}
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "atari100k_fidelity.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PROTOCOL": "2022"})
    assert out.returncode != 0 and "PROTOCOL takes current and 2021" in out.stderr


def test_fidelity_sweep_with_the_frame_skip_cut_at_a_lost_life(tmp_path):
    """LIFE_LOSS=cut or cut_2021: every configuration with --life-loss-frame-skip and _cut or
    _cut2021 after the protocol in its name; each parses and passes its agent's checks; the
    default (full) adds nothing; another value fails."""
    for protocol, life_loss, suffix in (("current", "cut", "_cut"), ("2021", "cut_2021", "_cut2021")):
        base = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES="Pong", PROTOCOL=protocol)
        cut = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES="Pong", PROTOCOL=protocol, LIFE_LOSS=life_loss)
        assert base == dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES="Pong", PROTOCOL=protocol,
                               LIFE_LOSS="full")
        assert len(cut) == len(base) == 6
        for b, t in zip(base, cut):
            name = flag(b, "--exp-name")
            stem = name[: -len("_100k")]
            assert t == [stem + suffix + "_100k" if x == name else x for x in b] + ["--life-loss-frame-skip", life_loss]
            module = load_agent(t[1])
            args = tyro.cli(module.Args, args=t[2:])
            module.validate_args(args)
            module.validate_atari100k_args(args)
    assert flag(cut[0], "--exp-name") == "drq_2021_cut2021_100k"
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "atari100k_fidelity.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "LIFE_LOSS": "half"})
    assert out.returncode != 0 and "LIFE_LOSS takes full, cut and cut_2021" in out.stderr


def test_fidelity_sweep_from_the_old_roms(tmp_path):
    """ROM_DIR: the 10 games whose atari-py 0.2.6 ROM differs get --rom-file with their ROM, the
    others keep ale-py's, every name gets _oldrom; with PROTOCOL=2021 the 2021 flags come too; a
    missing ROM fails before anything is emitted."""
    roms = tmp_path / "roms"
    roms.mkdir()
    for name in ("bank_heist", "assault"):
        (roms / f"{name}.bin").write_bytes(b"rom")
    games = "BankHeist Pong Assault"
    current = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES=games)
    old = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES=games, ROM_DIR=str(roms))
    assert len(old) == len(current) == 18
    for base, t in zip(current, old):
        name, game = flag(base, "--exp-name"), flag(base, "--env-id")
        rom = [] if game == "Pong" else ["--rom-file", str(roms / ("bank_heist.bin" if game == "BankHeist" else "assault.bin"))]
        assert t == [name.replace("_100k", "_oldrom_100k") if x == name else x for x in base] + rom
    published = dry_run("atari100k_fidelity.sh", tmp_path, SEEDS="1", GAMES="BankHeist", AGENTS="drq", NETWORKS="none",
                        PROTOCOL="2021", ROM_DIR=str(roms))
    assert published == [["python", "drq_moe_atari100k.py", "--exp-name", "drq_2021_oldrom_100k", "--env-id", "BankHeist",
                          "--seed", "1", "--moe", "none", "--shift-per", "batch", "--noop-unit", "frame",
                          "--rom-file", str(roms / "bank_heist.bin")]]
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "atari100k_fidelity.sh"), "--dry-run"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ROM_DIR": str(roms), "GAMES": "Pong Krull", "RUNS_DIR": str(tmp_path)})
    assert out.returncode != 0 and "holding krull.bin" in out.stderr and "python" not in out.stdout


def test_dopamine_curves_run_dopamines_agents_with_and_without_soft_moe(tmp_path):
    """The longer runs against Dopamine's curves: DQN and Dopamine's Rainbow (no noisy nets, dueling
    or double DQN), each as the baseline and with Soft MoE-8, 10M frames by default, every game with
    every seed; NUM_ENVS sets the environments per run."""
    commands = dry_run("dopamine_curves.sh", tmp_path)
    by_config = collections.defaultdict(set)
    for t in commands:
        by_config[flag(t, "--exp-name")].add((flag(t, "--env-id"), flag(t, "--seed")))
        assert flag(t, "--total-frames") == "10000000" and flag(t, "--num-envs") == "1"
        rainbow = t[1] == "rainbow_moe_atari.py"
        assert all((f in t) == rainbow for f in ("--no-noisy", "--no-dueling", "--no-double"))
        assert (flag(t, "--moe"), flag(t, "--num-experts") if "--num-experts" in t else None) in (("none", None), ("soft", "8"))
    assert set(by_config) == {"dqn_none", "dqn_soft_e8", "rainbow_none", "rainbow_soft_e8"}
    assert all(runs == {(g, s) for g in ("Pong", "Breakout", "Asterix", "Seaquest") for s in ("1", "2")}
               for runs in by_config.values())
    fast = dry_run("dopamine_curves.sh", tmp_path, NUM_ENVS="16", FRAMES="2000000", GAMES="Pong", SEEDS="1")
    assert len(fast) == 4 and all(flag(t, "--num-envs") == "16" and flag(t, "--total-frames") == "2000000" for t in fast)
    fp32 = dry_run("dopamine_curves.sh", tmp_path, GAMES="Pong", SEEDS="1", AGENTS="rainbow", NETWORKS="none",
                   PRECISION="fp32")
    default = [t for t in commands if flag(t, "--exp-name") == "rainbow_none" and flag(t, "--env-id") == "Pong"
               and flag(t, "--seed") == "1"]
    assert len(fp32) == 1 and fp32[0] == [t.replace("rainbow_none", "rainbow_none_fp32") for t in default[0]] + ["--no-tf32"]


@pytest.mark.parametrize("sweep, variable, value, message", [
    ("atari100k_fidelity.sh", "NETWORKS", "none sfot", "NETWORKS takes none, soft and top1 (got sfot)"),
    ("atari100k_fidelity.sh", "AGENTS", "drq spr", "AGENTS takes drq and der (got spr)"),
    ("atari100k_protocol_probe.sh", "VARIANTS", "2021 fp16", "VARIANTS takes 2021, fp32, shiftbatch, noopframe, "
                                                              "oldrom, savemodel and swapeval (got fp16)"),
    ("atari100k_protocol_probe.sh", "VARIANTS", "2021 swapeval", "VARIANTS=swapeval found no finished savemodel run"),
    ("fig12_16_atari100k.sh", "AGENTS", "der dqn", "AGENTS takes der and drq (got dqn)"),
    ("dopamine_curves.sh", "NETWORKS", "none top1", "NETWORKS takes none and soft (got top1)"),
    ("dopamine_curves.sh", "AGENTS", "dqn iqn", "AGENTS takes dqn and rainbow (got iqn)"),
    ("dopamine_curves.sh", "PRECISION", "bf16", "PRECISION takes tf32 and fp32 (got bf16)"),
    *[("atari100k_fidelity.sh", "SEEDS", seeds, f"SEEDS takes a count (5: seeds 1-5), a range (4-7; 2-2 for seed 2 "
       f"alone) or a list (\"3 4\"); got '{seeds}'") for seeds in ("0", "3-2", "1,2", "two")],
    *[(sweep, "AGENTS", "dqn rainbw", "AGENTS takes dqn and rainbow (got rainbw)") for sweep in (
        "fig1_expert_scaling.sh", "fig4_replay_ratio.sh", "fig7_cnn_encoder.sh", "fig9_load_balancing.sh",
        "fig13_15_variants.sh")],
])
def test_a_bad_value_after_good_ones_emits_nothing(tmp_path, sweep, variable, value, message):
    """The launcher starts the commands it reads, so a sweep checks every value before it emits
    one: a typo in the second value must not leave a partial sweep running."""
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", sweep), "--dry-run"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, variable: value, "RUNS_DIR": str(tmp_path)})
    assert out.returncode == 2 and message in out.stderr and "python " not in out.stdout
