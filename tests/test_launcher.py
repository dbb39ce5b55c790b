"""benchmark/launch.py end to end: runs in parallel, never twice, failures reported, an
interrupted sweep continued (a real agent resumed from its checkpoint), and the Slurm path
against a real single-node Slurm started by the test (Debian's slurmctld/slurmd)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent_runs import ROOT, fake_mps_control, records
from slurm_cluster import SlurmCluster, slurm_installed

LAUNCH = os.path.join(ROOT, "benchmark", "launch.py")
sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import launch  # noqa: E402

# A stand-in for an agent: a run folder with config.json, a checkpoint, a final summary record,
# `--resume FOLDER` to continue; it sleeps while the file named by --slow-if exists.
FAKE_AGENT = r'''
import json, os, sys, time
a = sys.argv[1:]
get = lambda flag, default=None: a[a.index(flag) + 1] if flag in a else default
if "--fail" in a:
    raise SystemExit("error: this run was told to fail")
run = get("--resume") or os.path.join(get("--runs-dir"), "run")
os.makedirs(run, exist_ok=True)
stamp = os.path.join(get("--stamps"), f"{os.getpid()}.json")
with open(stamp + ".tmp", "w") as f:  # renamed into place whole: the test never reads half a stamp
    json.dump({"start": time.time(), "omp": os.environ.get("OMP_NUM_THREADS"), "resumed": "--resume" in a,
               "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "mps": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
               "mps_up": os.path.exists(os.path.join(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/nonexistent"), "up")),
               "args": a}, f)
os.replace(stamp + ".tmp", stamp)
open(os.path.join(run, "config.json"), "w").write(json.dumps({"exp_name": get("--exp-name")}))
open(os.path.join(run, "checkpoint.pt"), "w").write("state")
time.sleep(float(get("--sleep", "0")))
while get("--slow-if") and os.path.exists(get("--slow-if")):
    time.sleep(0.1)
with open(os.path.join(get("--stamps"), f"{os.getpid()}.json")) as f:
    stamp = json.load(f)
stamp["end"] = time.time()
with open(os.path.join(get("--stamps"), f"{os.getpid()}.json"), "w") as f:
    json.dump(stamp, f)
open(os.path.join(run, "summary.jsonl"), "a").write(json.dumps({"final": True}) + "\n")
'''


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    (tmp_path / "stamps").mkdir()
    return tmp_path


def fake_command(tmp, name, seed, *extra):
    return f"python {tmp / 'fake_agent.py'} --exp-name {name} --seed {seed} --stamps {tmp / 'stamps'} " + " ".join(map(str, extra))


def write_commands(tmp, commands):
    path = tmp / "commands.txt"
    path.write_text("# a comment\n\n" + "\n".join(commands) + "\n")
    return str(path)


def start_launcher(sweep, commands_file, *flags, env=None):
    return subprocess.Popen([sys.executable, LAUNCH, "--sweep-dir", str(sweep), "--commands", commands_file, *flags],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def launcher(sweep, commands_file, *flags, timeout=240, env=None):
    proc = start_launcher(sweep, commands_file, *flags, env=env)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def states(sweep):
    return {d: json.loads((sweep / d / "state.json").read_text()) for d in os.listdir(sweep)
            if (sweep / d / "state.json").exists()}


def stamps(tmp):
    return [json.loads(p.read_text()) for p in (tmp / "stamps").iterdir() if p.suffix == ".json"]


def status_line(sweep, env=None):
    out = subprocess.run([sys.executable, LAUNCH, "--sweep-dir", str(sweep), "--status", "--verbose"],
                         capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_run_ids_and_commands_file(tmp_path):
    cmd = "python dqn_moe_atari.py --exp-name dqn_soft_e4 --env-id Pong --seed 3 --moe soft"
    rid = launch.run_id(cmd)
    assert rid.startswith("dqn_soft_e4__Pong__s3__") and rid == launch.run_id(cmd)
    assert launch.run_id(cmd + " --num-experts 4") != rid
    assert launch.run_id("python der_moe_atari100k.py --env-id ALE/Breakout-v5").startswith("der_moe_atari100k__Breakout__s1__")
    path = tmp_path / "c.txt"
    path.write_text(f"# sweep\n\n  {cmd}  \n{cmd.replace(' ', '   ')}\n")
    assert launch.read_commands(str(path)) == [cmd, cmd]
    path.write_text("python x.py --name 'unclosed\n")
    with pytest.raises(SystemExit, match="line 1 of the commands"):
        launch.read_commands(str(path))
    path.write_text("# nothing\n")
    with pytest.raises(SystemExit, match="no commands"):
        launch.read_commands(str(path))


def test_run_ids_name_files_by_their_last_parts(tmp_path):
    """A sweep folder moved to another machine keeps its runs: a ROM or a trained network that lies
    elsewhere there gives the same run id; another ROM or network gives another."""
    base = "python drq_moe_atari100k.py --exp-name drq_oldrom --env-id Amidar --seed 2"
    assert launch.run_id(base).endswith(hashlib.sha1(base.encode()).hexdigest()[:8]), \
        "a command without file flags is hashed whole, as before: existing sweep folders keep their ids"
    here, there = (launch.run_id(f"{base} --rom-file {d}/amidar.bin") for d in ("/tmp/code/roms", "/home/me/atari_roms"))
    assert here == there and here != launch.run_id(f"{base} --rom-file /tmp/code/roms/amidar_pal.bin")
    assert here != launch.run_id(base)
    model = "{}/sweep/drq_save__Amidar__s2__1234abcd/{}/model.pt"
    ids = [launch.run_id(f"{base} --eval-model {model.format(root, run)}")
           for root, run in (("/tmp/a", "Amidar__1"), ("/work/b", "Amidar__1"), ("/tmp/a", "Amidar__2"))]
    assert ids[0] == ids[1] != ids[2]

    # a run not yet finished takes the command as given here; a finished one keeps its record
    sweep = str(tmp_path / "sweep")
    old = [f"{base} --rom-file /tmp/code/roms/amidar.bin", f"{base.replace('--seed 2', '--seed 3')} --rom-file /tmp/code/roms/amidar.bin"]
    new = [c.replace("/tmp/code/roms", "/home/me/atari_roms") for c in old]
    first = launch.register(sweep, old, "/tmp/code")
    launch.update_state(first[1], status="done")
    second = launch.register(sweep, new, "/home/me/moe-rl")
    assert second == first
    assert launch.read_state(first[0])["command"] == new[0] and launch.read_state(first[0])["workdir"] == "/home/me/moe-rl"
    assert launch.read_state(first[1])["command"] == old[1] and launch.read_state(first[1])["workdir"] == "/tmp/code"


def test_parallel_runs_each_once(fake):
    sweep = fake / "sweep"
    commands = write_commands(fake, [fake_command(fake, "a", s, "--sleep", "1.5") for s in (1, 2, 3, 4)])
    code, out = launcher(sweep, commands, "--jobs", "2", "--threads-per-run", "1")
    assert code == 0, out
    assert "4 done, 0 failed" in out
    runs = stamps(fake)
    assert len(runs) == 4 and all(r["omp"] == "1" for r in runs)
    overlap = max(sum(r["start"] <= t < r["end"] for r in runs) for t in [r["start"] for r in runs])
    assert overlap == 2, "two runs at a time with --jobs 2"
    for state in states(sweep).values():
        assert state["status"] == "done" and state["attempts"] == 1
        run_dir = sweep / launch.run_id(state["command"])
        assert not (run_dir / "run" / "checkpoint.pt").exists(), "a finished run's checkpoint is removed"
        assert (run_dir / "run" / "summary.jsonl").exists() and (run_dir / "log.txt").exists()

    code, out = launcher(sweep, commands, "--jobs", "2")  # the same sweep again: nothing to do
    assert code == 0 and "4 of 4 run(s) done" in out
    assert len(stamps(fake)) == 4
    more = write_commands(fake, [fake_command(fake, "a", s, "--sleep", "1.5") for s in (1, 2, 3, 4, 5)])
    code, out = launcher(sweep, more, "--jobs", "2")  # one more seed: only it runs
    assert code == 0 and len(stamps(fake)) == 5


def test_start_within_starts_no_run_after_its_time(fake):
    """--start-within S: the runs going at S seconds finish, no other starts; the same command
    without it continues the sweep."""
    sweep = fake / "sweep"
    commands = write_commands(fake, [fake_command(fake, "a", s, "--sleep", "2") for s in (1, 2, 3, 4)])
    code, out = launcher(sweep, commands, "--jobs", "1", "--start-within", "1")
    assert code == 0, out
    assert "1 done, 0 failed" in out and "3 run(s) not started, 1 s (--start-within) having passed" in out
    assert len(stamps(fake)) == 1 and sorted(s["status"] for s in states(sweep).values()).count("done") == 1
    code, out = launcher(sweep, commands, "--jobs", "2")
    assert code == 0 and "3 done, 0 failed" in out and len(stamps(fake)) == 4


def test_longest_first_starts_the_longest_expected_runs_first(fake):
    """--longest-first: seed 2 of three configurations starts in the order of seed 1's wall clock,
    longest first, after a configuration with no finished run; without the flag, in the file's order."""
    sweep = fake / "sweep"
    sleeps = {"short": 0.1, "long": 2.0, "mid": 1.0}
    first = write_commands(fake, [fake_command(fake, name, 1, "--sleep", t) for name, t in sleeps.items()])
    code, out = launcher(sweep, first, "--jobs", "3")
    assert code == 0 and "3 done" in out, out
    mid1, mid2, long1 = (launch.without_seed(fake_command(fake, name, seed, "--sleep", sleeps[name]))
                         for name, seed in (("mid", 1), ("mid", 2), ("long", 1)))
    assert mid1 == mid2 != long1
    second = [fake_command(fake, name, 2, "--sleep", t) for name, t in {**sleeps, "new": 0.1}.items()]
    before = len(stamps(fake))
    code, out = launcher(sweep, write_commands(fake, second), "--jobs", "1", "--longest-first")
    assert code == 0 and "4 done" in out, out
    started = sorted((r for r in stamps(fake) if r["args"][r["args"].index("--seed") + 1] == "2"), key=lambda r: r["start"])
    assert len(stamps(fake)) == before + 4
    assert [r["args"][r["args"].index("--exp-name") + 1] for r in started] == ["new", "long", "mid", "short"]
    in_order = launch.register(str(sweep), [fake_command(fake, name, 3, "--sleep", t) for name, t in sleeps.items()], str(fake))
    assert [os.path.basename(d).split("__")[0] for d in in_order] == ["short", "long", "mid"]
    reordered = launch.longest_first(in_order, str(sweep))
    assert [os.path.basename(d).split("__")[0] for d in reordered] == ["long", "mid", "short"]


def test_by_game_starts_every_configuration_of_a_game_before_the_next_game(fake):
    """--by-game: a sweep lists each configuration over all games (two networks on three games, two
    seeds); the runs start seed by seed, game by game, each game's networks in the listed order.
    Combined with --longest-first it fails in one line."""
    listed = [fake_command(fake, net, seed, "--env-id", game)
              for seed in (2, 1) for net in ("none", "soft") for game in ("Pong", "Alien", "Qbert")]
    commands = write_commands(fake, listed)
    code, out = launcher(fake / "sweep", commands, "--jobs", "1", "--by-game")
    assert code == 0 and "12 done" in out, out
    started = [r["args"] for r in sorted(stamps(fake), key=lambda r: r["start"])]
    order = [(a[a.index("--seed") + 1], a[a.index("--env-id") + 1], a[a.index("--exp-name") + 1]) for a in started]
    assert order == [(seed, game, net) for seed in ("1", "2") for game in ("Pong", "Alien", "Qbert")
                     for net in ("none", "soft")]
    code, out = launcher(fake / "sweep", commands, "--by-game", "--longest-first")
    assert code == 1 and out.strip() == "error: --by-game and --longest-first are two orders: give one"


def test_runs_share_out_the_gpus(fake):
    """--gpus 0,1 --runs-per-gpu 2: four runs at once, two on each GPU (the launcher only sets
    CUDA_VISIBLE_DEVICES, so this runs without a GPU)."""
    sweep = fake / "sweep"
    commands = write_commands(fake, [fake_command(fake, "a", s, "--sleep", "2") for s in range(1, 7)])
    code, out = launcher(sweep, commands, "--gpus", "0,1", "--runs-per-gpu", "2")
    assert code == 0 and "on 2 GPU(s) x 2" in out, out
    runs = stamps(fake)
    first = sorted(runs, key=lambda r: r["start"])[:4]
    assert sorted(r["gpu"] for r in first) == ["0", "0", "1", "1"]
    assert {r["gpu"] for r in runs} == {"0", "1"}


def test_mps_daemon_serves_the_runs_and_is_stopped(fake):
    """--mps: one control daemon, started before the first run, its pipe folder in every run's
    environment, told to quit after the last run, its folder removed."""
    env, log = fake_mps_control(fake)
    commands = write_commands(fake, [fake_command(fake, "a", s, "--sleep", "0.5") for s in (1, 2, 3)])
    code, out = launcher(fake / "sweep", commands, "--gpus", "0", "--runs-per-gpu", "2", "--mps", env=env)
    assert code == 0 and "3 done, 0 failed" in out, out
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "quit"], lines
    pipe = lines[0].split()[1]
    assert lines[1].split()[1] == pipe
    runs = stamps(fake)
    assert len(runs) == 3 and all(r["mps"] == pipe and r["mps_up"] for r in runs)
    assert not os.path.exists(pipe)

    more = write_commands(fake, [fake_command(fake, "b", 1)])  # a daemon the machine runs is used, not started
    code, out = launcher(fake / "sweep", more, "--gpus", "0", "--mps", env={**env, "CUDA_MPS_PIPE_DIRECTORY": "/mps"})
    assert code == 0 and len(log.read_text().splitlines()) == 2, out
    assert [r["mps"] for r in stamps(fake) if r["args"][1] == "b"] == ["/mps"]


def test_mps_without_gpu_or_daemon_fails_in_one_line(fake):
    commands = write_commands(fake, [fake_command(fake, "a", 1)])
    for flags, env, needle in ((["--gpus", ""], None, "no GPU is visible"),
                               (["--gpus", "0"], {"PATH": str(fake)}, "--mps needs nvidia-cuda-mps-control")):
        code, out = launcher(fake / "sweep", commands, "--mps", *flags, env=env)
        assert code != 0 and "Traceback" not in out and needle in out.strip().splitlines()[-1], out
    assert stamps(fake) == []


def test_failures_are_reported_and_retried_on_request(fake):
    sweep = fake / "sweep"
    commands = write_commands(fake, [fake_command(fake, "ok", 1), fake_command(fake, "bad", 1, "--fail")])
    code, out = launcher(sweep, commands, "--jobs", "2")
    assert code == 1
    assert "error: this run was told to fail" in out and "1 done, 1 failed" in out
    bad = next(s for s in states(sweep).values() if "--fail" in s["command"])
    assert bad["status"] == "failed" and bad["error"] == "error: this run was told to fail" and bad["returncode"] == 1
    assert "1 failed" in status_line(sweep)
    code, out = launcher(sweep, commands, "--jobs", "2")
    assert code == 0 and "2 of 2 run(s) done, failed or under way" in out
    code, out = launcher(sweep, commands, "--jobs", "2", "--retry-failed")
    assert code == 1 and next(s for s in states(sweep).values() if "--fail" in s["command"])["attempts"] == 2


def test_sigterm_stops_the_sweep_and_the_next_launch_continues_it(fake):
    sweep, slow = fake / "sweep", fake / "slow"
    slow.write_text("")
    commands = write_commands(fake, [fake_command(fake, "a", s, "--slow-if", slow) for s in (1, 2, 3)])
    proc = start_launcher(sweep, commands, "--jobs", "2")
    deadline = time.time() + 60
    while len(stamps(fake)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    code, second = launcher(sweep, commands, "--jobs", "2")
    assert code != 0 and "error: another launcher is running this sweep" in second, second
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert sorted(s["status"] for s in states(sweep).values()) == ["pending", "stopped", "stopped"]
    assert "3 run(s) left" in out
    slow.unlink()
    code, out = launcher(sweep, commands, "--jobs", "2")
    assert code == 0 and "3 done" in out
    resumed = [r for r in stamps(fake) if r["resumed"]]
    assert len(resumed) == 2, "the two stopped runs continue from their checkpoints"
    assert sorted(s["attempts"] for s in states(sweep).values()) == [1, 2, 2]


def test_a_crashed_sweep_resumes_real_agent_runs(tmp_path):
    """SIGKILL of everything (launcher, workers, agents) as a crashed machine would: the next
    launch sees the dead runs, and the agents continue from their checkpoints to the end."""
    sweep = tmp_path / "sweep"
    tiny = ("--env-id Pong --impala-channels 4 8 8 --expert-hidden 16 --num-experts 2 --batch-size 8 "
            "--buffer-size 2000 --min-replay-history 100 --iteration-steps 100 --target-update-period 40 "
            "--log-every 50 --device cpu --total-frames 2400 --checkpoint-every 100")
    commands = write_commands(tmp_path, [f"python dqn_moe_atari.py --exp-name tiny --seed {s} {tiny}" for s in (1, 2)])
    proc = start_launcher(sweep, commands, "--jobs", "2")
    deadline = time.time() + 240
    while time.time() < deadline:
        found = [p for p in sweep.glob("*/*/checkpoint.pt")] if sweep.exists() else []
        if len(found) == 2:
            break
        time.sleep(0.1)
    assert len(found) == 2, "both runs wrote a checkpoint"
    workers = [s["pid"] for s in states(sweep).values()]
    proc.kill()
    for pid in workers:
        os.killpg(pid, signal.SIGKILL)  # a worker leads its session: it and its agent
    proc.communicate()
    assert all(s["status"] == "running" for s in states(sweep).values())
    code, out = launcher(sweep, commands, "--jobs", "2")
    assert code == 0, out
    for state in states(sweep).values():
        assert state["status"] == "done" and state["attempts"] == 2 and state["resumed"]
        run_dir = sweep / launch.run_id(state["command"])
        (agent_run,) = [d for d in run_dir.iterdir() if d.is_dir()]
        assert "--resume" in (run_dir / "log.txt").read_text()
        recs = records(agent_run)
        steps = [r["step"] for r in recs if "iteration" in r]
        assert steps == list(range(100, 601, 100)), "every iteration once, in order, after the resume"
        assert recs[-1]["final"] and recs[-1]["step"] == 600
        assert not (agent_run / "checkpoint.pt").exists()


def test_dry_run_lists_without_starting(fake):
    sweep = fake / "sweep"
    commands = write_commands(fake, [fake_command(fake, "a", 1), fake_command(fake, "a", 2)])
    code, out = launcher(sweep, commands, "--dry-run")
    assert code == 0 and out.count("fake_agent.py") == 2 and not sweep.exists()


def test_bad_input_fails_in_one_line(tmp_path):
    for flags, needle in ((["--commands", str(tmp_path / "none.txt")], "no commands file"),
                          (["--status"], "no sweep at"),
                          (["--runs-per-gpu", "0", "--commands", "-"], "--runs-per-gpu must be at least 1"),
                          (["--start-within", "-5", "--commands", "-"], "--start-within must be 0 or more"),
                          (["--slurm", "--start-within", "600", "--commands", "-"], "each task's --time limits"),
                          ([], "give --commands")):
        out = subprocess.run([sys.executable, LAUNCH, "--sweep-dir", str(tmp_path / "s"), *flags],
                             capture_output=True, text=True, input="", timeout=60)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith("error: ") and needle in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------
# Slurm
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if not slurm_installed():
        if os.environ.get("MOE_RL_REQUIRE_SLURM"):
            pytest.fail("Slurm is required here (MOE_RL_REQUIRE_SLURM) but slurmctld/slurmd/sbatch are missing: "
                        "apt-get install slurmctld slurmd slurm-client")
        pytest.skip("Slurm is not installed (apt-get install slurmctld slurmd slurm-client)")
    with SlurmCluster(str(tmp_path_factory.mktemp("slurm")), cpus=4) as cluster:
        yield cluster.env


def wait_for(sweep, env, done, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = status_line(sweep, env)
        if done(out):
            return out
        time.sleep(1)
    raise AssertionError(f"the Slurm runs did not get there in {timeout} s:\n{out}")


def test_slurm_job_array_runs_the_sweep(fake, slurm):
    sweep = fake / "sweep"
    tiny = ("--env-id Pong --impala-channels 4 8 8 --expert-hidden 16 --num-experts 2 --batch-size 8 "
            "--buffer-size 2000 --min-replay-history 100 --iteration-steps 100 --device cpu --total-frames 800")
    commands = write_commands(fake, [fake_command(fake, "a", 1), fake_command(fake, "a", 2),
                                     fake_command(fake, "bad", 1, "--fail"),
                                     f"python dqn_moe_atari.py --exp-name tiny --seed 1 {tiny}"])
    code, out = launcher(sweep, commands, "--slurm", "--gpus-per-task", "0", "--runs-per-gpu", "2",
                         "--cpus-per-task", "2", "--time", "10:00", env=slurm)
    assert code == 0 and "submitted 4 run(s) as Slurm job array" in out and "2 task(s) of 2" in out, out
    (job_dir,) = (sweep / ".slurm").iterdir()
    script = (job_dir / "job.sh").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --time=10:00" in script
    out = wait_for(sweep, slurm, lambda s: "3 done" in s and "1 failed" in s)
    assert "error: this run was told to fail" in out
    by_exp = {s["command"].split("--exp-name ")[1].split()[0] + s["command"].split("--seed ")[1][0]: s
              for s in states(sweep).values()}
    assert {k: s["status"] for k, s in by_exp.items()} == {"a1": "done", "a2": "done", "bad1": "failed", "tiny1": "done"}
    assert by_exp["a1"]["slurm_task"] == by_exp["a2"]["slurm_task"] != by_exp["bad1"]["slurm_task"]
    tiny_run = next((sweep / launch.run_id(by_exp["tiny1"]["command"])).glob("*/summary.jsonl"))
    assert json.loads(tiny_run.read_text().splitlines()[-1])["final"]
    code, out = launcher(sweep, commands, "--slurm", "--gpus-per-task", "0", env=slurm)
    assert code == 0 and "nothing to submit" in out


def test_slurm_cancelled_task_is_resubmitted_and_resumes(fake, slurm):
    sweep, slow = fake / "sweep", fake / "slow"
    slow.write_text("")
    commands = write_commands(fake, [fake_command(fake, "long", 1, "--slow-if", slow)])
    flags = ["--slurm", "--gpus-per-task", "0", "--cpus-per-task", "1"]
    code, out = launcher(sweep, commands, *flags, env=slurm)
    assert code == 0, out
    wait_for(sweep, slurm, lambda s: "1 running" in s and len(stamps(fake)) == 1)
    (state,) = states(sweep).values()
    subprocess.run(["scancel", state["slurm_task"].split("_")[0]], env=slurm, check=True)
    wait_for(sweep, slurm, lambda s: "1 stopped" in s)
    slow.unlink()
    code, out = launcher(sweep, commands, *flags, env=slurm)
    assert code == 0 and "submitted 1 run(s)" in out, out
    wait_for(sweep, slurm, lambda s: "1 done" in s)
    (state,) = states(sweep).values()
    assert state["attempts"] == 2 and state["resumed"]
