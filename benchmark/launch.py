"""Run a sweep's commands: in parallel on this machine (every GPU, several runs per GPU, or the CPU
cores when there is no GPU), or as a Slurm job array. Every run keeps its state in its own folder,
so an interrupted sweep continues where it stopped and a finished run is never started again.

    python benchmark/launch.py --sweep-dir runs/sweeps/fig1 --commands cmds.txt            # here
    python benchmark/launch.py --sweep-dir runs/sweeps/a100k --commands cmds.txt --runs-per-gpu 12 --mps
    python benchmark/launch.py --sweep-dir runs/sweeps/fig1 --commands cmds.txt --dry-run  # list
    python benchmark/launch.py --sweep-dir runs/sweeps/fig1 --commands cmds.txt --slurm \\
        --partition gpu --time 2-00:00:00 --gpus-per-task 1 --runs-per-gpu 4
    python benchmark/launch.py --sweep-dir runs/sweeps/fig1 --status                       # progress

The sweeps (benchmark/*.sh) write their commands to this script's standard input and pass their
own arguments on, so `bash benchmark/fig1_expert_scaling.sh --slurm --partition gpu` works.

A commands file holds one command per line (`python dqn_moe_atari.py --env-id Pong ...`; blank
lines and `#` comments are skipped). Each command becomes a run folder
`<sweep-dir>/<run-id>/`, where `<run-id>` reads `<exp-name>__<game>__s<seed>__<hash>` (the hash is
of the whole command, so a changed command is a new run; of a ROM or model file it takes the
name, not the folder, so the sweep folder can move to another machine: PATH_FLAGS). The folder
holds `state.json`, the command's output in `log.txt`, and the agent's own run folder (the command
gets `--runs-dir` set to the run folder), which `python benchmark/aggregate.py <sweep-dir>` reads.

A run's state goes pending -> (queued, under Slurm) -> running -> done | failed. A run that was
stopped (Ctrl-C, SIGTERM, a Slurm time limit, a crashed machine) is started again with `--resume`
from its last checkpoint when it has one (the sweeps pass `--checkpoint-every`), from scratch
otherwise. Failed runs are retried only with `--retry-failed`. A finished run's `checkpoint.pt` (the
replay buffer included: gigabytes) is deleted unless `--keep-checkpoints`.

The Slurm path submits the runs that are not done, queued or running as one job array
(`sbatch`); each array task starts this script on its share of the runs, on the GPUs Slurm gave
it. Slurm does the scheduling; `--status` asks `squeue` about the queued and running ones."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
FINAL = ("done", "failed")


def fail(message: str):
    raise SystemExit(f"error: {message}")


# ---------------------------------------------------------------------------------------------
# Runs and their states
# ---------------------------------------------------------------------------------------------
def read_commands(path: str) -> list[str]:
    """One command per line, normalised to single spaces; blank lines and comments dropped."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        if not os.path.isfile(path):
            fail(f"no commands file at {path}")
        with open(path) as f:
            lines = f.read().splitlines()
    commands = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            commands.append(shlex.join(shlex.split(line)))
        except ValueError as e:
            fail(f"line {number} of the commands is not a valid command ({e}): {line[:80]}")
    if not commands:
        fail("the sweep gave no commands: check its GAMES, SEEDS and the other variables it reads")
    return commands


def flag_value(tokens: list[str], flag: str, default: str) -> str:
    for i, token in enumerate(tokens):
        if token == flag and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return default


# Flags that name a file, and how many of its path's last parts identify it: a ROM by its file name,
# a trained network (<sweep>/<run-id>/<agent's run>/model.pt) by its run folders. The run id hashes
# those parts alone, so that a sweep folder moved to another machine or checkout, where the same
# files lie elsewhere, still knows its runs.
PATH_FLAGS = {"--rom-file": 1, "--eval-model": 3}


def path_tail(path: str, parts: int) -> str:
    return "/".join(os.path.normpath(path).split(os.sep)[-parts:])


def command_identity(command: str) -> str:
    """The command as the run id hashes it: the files of PATH_FLAGS by their last path parts (a
    command without them as it is, so that sweep folders made before PATH_FLAGS keep their ids)."""
    tokens = shlex.split(command)
    named = [i for i, token in enumerate(tokens) if token.partition("=")[0] in PATH_FLAGS]
    for i in named:
        flag, equals, value = tokens[i].partition("=")
        if equals:
            tokens[i] = f"{flag}={path_tail(value, PATH_FLAGS[flag])}"
        elif i + 1 < len(tokens):
            tokens[i + 1] = path_tail(tokens[i + 1], PATH_FLAGS[flag])
    return shlex.join(tokens) if named else command


def run_id(command: str) -> str:
    """Readable and unique: `<exp-name>__<game>__s<seed>__<8 hex of the command's hash>`."""
    tokens = shlex.split(command)
    script = next((os.path.basename(t)[:-3] for t in tokens if t.endswith(".py")), "run")
    game = flag_value(tokens, "--env-id", "default").replace("ALE/", "").split("-v")[0]
    parts = [flag_value(tokens, "--exp-name", script), game, "s" + flag_value(tokens, "--seed", "1")]
    readable = "__".join(re.sub(r"[^A-Za-z0-9_.+-]", "_", p) for p in parts)
    return f"{readable}__{hashlib.sha1(command_identity(command).encode()).hexdigest()[:8]}"


def state_path(run_dir: str) -> str:
    return os.path.join(run_dir, "state.json")


def read_state(run_dir: str) -> dict:
    with open(state_path(run_dir)) as f:
        return json.load(f)


def write_state(run_dir: str, state: dict) -> None:
    """Atomic: a reader never sees half a file."""
    tmp = state_path(run_dir) + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, state_path(run_dir))


def update_state(run_dir: str, **changes) -> dict:
    state = read_state(run_dir)
    state.update(changes)
    write_state(run_dir, state)
    return state


def register(sweep_dir: str, commands: list[str], workdir: str) -> list[str]:
    """The run folder of every command, created (pending) when new; existing states are kept, but a
    run that has yet to start or finish here takes this command and folder (its files may lie
    elsewhere on this machine: PATH_FLAGS)."""
    run_dirs = []
    for command in commands:
        run_dir = os.path.join(sweep_dir, run_id(command))
        if not os.path.exists(state_path(run_dir)):
            os.makedirs(run_dir, exist_ok=True)
            write_state(run_dir, {"command": command, "workdir": workdir, "status": "pending", "attempts": 0})
        else:
            state = read_state(run_dir)
            waiting = live_status(state, None) in ("pending", "stopped")
            if waiting and (state["command"], state["workdir"]) != (command, workdir):
                update_state(run_dir, command=command, workdir=workdir)
        run_dirs.append(run_dir)
    return run_dirs


def sweep_runs(sweep_dir: str) -> list[str]:
    if not os.path.isdir(sweep_dir):
        fail(f"no sweep at {sweep_dir}: start it first (the sweep's folder is its --sweep-dir)")
    return sorted(os.path.join(sweep_dir, d) for d in os.listdir(sweep_dir)
                  if os.path.isfile(state_path(os.path.join(sweep_dir, d))))


def process_alive(pid: int) -> bool:
    """A live process of this launcher (a recycled pid running something else does not count)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(HERE).encode() in f.read()
    except OSError:
        return False


def slurm_queue() -> set[str] | None:
    """The job-array tasks Slurm still holds (pending or running) as `<job>_<task>`, or None when
    squeue cannot be asked (then nothing is judged stopped)."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()} if out.returncode == 0 else None


def live_status(state: dict, queue: set[str] | None) -> str:
    """What a run is now: its recorded status, unless the process or Slurm task behind a
    `running`/`queued` record is gone (then it is `stopped`, to be started again)."""
    status = state["status"]
    if status not in ("running", "queued"):
        return status
    if state.get("slurm_task"):
        return status if queue is None or state["slurm_task"] in queue else "stopped"
    if state.get("host") == socket.gethostname() and process_alive(state.get("pid") or -1):
        return status
    return "stopped"


def classify(run_dirs: list[str]) -> dict[str, str]:
    states = {d: read_state(d) for d in run_dirs}
    slurm = any(s.get("slurm_task") and s["status"] in ("running", "queued") for s in states.values())
    queue = slurm_queue() if slurm else set()
    if queue is None:
        print("launch: squeue did not answer: runs recorded as queued or running under Slurm count as under way",
              file=sys.stderr)
    return {d: live_status(s, queue) for d, s in states.items()}


def startable(run_dirs: list[str], retry_failed: bool) -> list[str]:
    """The runs to start now: pending and stopped ones (and failed ones with --retry-failed)."""
    wanted = {"pending", "stopped"} | ({"failed"} if retry_failed else set())
    statuses = classify(run_dirs)
    pending = [d for d, s in statuses.items() if s in wanted]
    if len(pending) < len(run_dirs):
        print(f"launch: {len(run_dirs) - len(pending)} of {len(run_dirs)} run(s) done, failed or under way: "
              "not started again", flush=True)
    return pending


def without_seed(command: str) -> str:
    """The command as `command_identity` has it, less its --seed: the runs of one configuration on
    one game."""
    tokens = shlex.split(command_identity(command))
    seeds = {i for i, t in enumerate(tokens) if t == "--seed"}
    return shlex.join(t for i, t in enumerate(tokens)
                      if i not in seeds and i - 1 not in seeds and not t.startswith("--seed="))


def longest_first(run_dirs: list[str], sweep_dir: str) -> list[str]:
    """`run_dirs` in the order that ends a batch soonest on a machine lent for a fixed time (the
    longest processing time first rule): each run's expected wall clock is the median of the
    finished runs in the sweep folder with its command but another --seed, and runs with none come
    first, in their order, as if longest."""
    seconds: dict[str, list[float]] = {}
    for run_dir in sweep_runs(sweep_dir):
        state = read_state(run_dir)
        if state.get("status") == "done" and state.get("started") and state.get("ended"):
            seconds.setdefault(without_seed(state["command"]), []).append(state["ended"] - state["started"])

    def expected(run_dir: str) -> float:
        known = seconds.get(without_seed(read_state(run_dir)["command"]))
        return statistics.median(known) if known else float("inf")

    return sorted(run_dirs, key=expected, reverse=True)


def by_game(run_dirs: list[str]) -> list[str]:
    """`run_dirs` seed by seed and, within a seed, game by game, each game's runs in their listed
    order: a sweep lists each configuration's runs over all games together, so a machine lent for
    a fixed time would otherwise end with every game begun and few of them compared."""
    def group(run_dir: str) -> tuple[int, str]:
        tokens = shlex.split(read_state(run_dir)["command"])
        seed = flag_value(tokens, "--seed", "1")
        return (int(seed) if seed.isdigit() else 0), flag_value(tokens, "--env-id", "default")

    groups = [group(d) for d in run_dirs]
    first_listed = {}
    for i, (_, game) in enumerate(groups):
        first_listed.setdefault(game, i)
    order = sorted(range(len(run_dirs)), key=lambda i: (groups[i][0], first_listed[groups[i][1]], i))
    return [run_dirs[i] for i in order]


# ---------------------------------------------------------------------------------------------
# One run (the worker): what both the local pool and a Slurm task start
# ---------------------------------------------------------------------------------------------
def agent_run_folders(run_dir: str) -> list[str]:
    return sorted(os.path.join(run_dir, d) for d in os.listdir(run_dir)
                  if os.path.isfile(os.path.join(run_dir, d, "config.json")))


def prepare_argv(run_dir: str, state: dict) -> list[str]:
    """The command with `python` as this interpreter, its run folder, and `--resume` when a
    previous attempt left a checkpoint. Folders of attempts without one are removed (nothing in
    them can be continued, and the new attempt starts from scratch)."""
    argv = shlex.split(state["command"])
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    argv += ["--runs-dir", os.path.abspath(run_dir)]
    resumable = [d for d in agent_run_folders(run_dir) if os.path.isfile(os.path.join(d, "checkpoint.pt"))]
    for folder in agent_run_folders(run_dir):
        if folder not in resumable[-1:]:
            shutil.rmtree(folder, ignore_errors=True)
    if resumable:
        argv += ["--resume", resumable[-1]]
    return argv


def last_error(run_dir: str) -> str:
    """The agent's one-line `error:` message, or the log's last line."""
    try:
        with open(os.path.join(run_dir, "log.txt"), errors="replace") as f:
            lines = [line.strip() for line in f.read()[-20000:].splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


def work(run_dir: str, keep_checkpoints: bool) -> int:
    """Run one command to its end, recording its state; SIGTERM/SIGINT stop it as `stopped`."""
    state = read_state(run_dir)
    argv = prepare_argv(run_dir, state)
    slurm_task = None
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        slurm_task = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    state = update_state(run_dir, status="running", host=socket.gethostname(), pid=os.getpid(),
                         attempts=state.get("attempts", 0) + 1, started=time.time(), resumed="--resume" in argv,
                         gpu=os.environ.get("CUDA_VISIBLE_DEVICES"), slurm_task=slurm_task)
    with open(os.path.join(run_dir, "log.txt"), "a") as log:
        log.write(f"\n# attempt {state['attempts']} on {state['host']}: {shlex.join(argv)}\n")
        log.flush()
        child = subprocess.Popen(argv, cwd=state.get("workdir") or None, stdout=log, stderr=subprocess.STDOUT)
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    returncode = child.wait()
    if stopping:
        update_state(run_dir, status="stopped", returncode=returncode, ended=time.time())
        return 128 + stopping[0]
    if returncode == 0:
        if not keep_checkpoints:
            for folder in agent_run_folders(run_dir):
                if os.path.isfile(os.path.join(folder, "checkpoint.pt")):
                    os.remove(os.path.join(folder, "checkpoint.pt"))
        update_state(run_dir, status="done", returncode=0, ended=time.time())
    else:
        update_state(run_dir, status="failed", returncode=returncode, ended=time.time(), error=last_error(run_dir))
    return returncode


# ---------------------------------------------------------------------------------------------
# Here: a pool of workers over the GPUs (or the CPU cores)
# ---------------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES when set (Slurm sets it), else what nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def make_slots(opts) -> list[str | None]:
    """One entry per run that may go at once: its GPU, or None on the CPU."""
    gpus = [g for g in opts.gpus.split(",") if g] if opts.gpus is not None else visible_gpus()
    if gpus:
        return [g for g in gpus for _ in range(opts.runs_per_gpu)]
    return [None] * (opts.jobs or max(1, (os.cpu_count() or 1) // (opts.threads_per_run or 2)))


@contextlib.contextmanager
def sweep_lock(sweep_dir: str):
    """One launcher at a time runs a sweep here: a second one would start the same runs."""
    with open(os.path.join(sweep_dir, ".launch.lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            fail(f"another launcher is running this sweep ({f.read().strip() or 'pid unknown'}); "
                 "wait for it, or stop it (its runs continue at the next launch)")
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield


@contextlib.contextmanager
def mps_daemon(enabled: bool):
    """NVIDIA's Multi-Process Service for the runs that share a GPU. Without it the GPU runs the
    kernels of one process at a time; with it, kernels of different runs run side by side: eight
    Atari 100k runs on an H100 trained 2.8x faster in sum (RESULTS.md, "Several runs per GPU with
    MPS"). Starts a control daemon of its own, whose pipe and log folders the runs find through
    the environment it yields, and stops it at the end; where CUDA_MPS_PIPE_DIRECTORY is already
    set (a daemon the machine runs), the runs use that one."""
    if not enabled or os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        yield {}
        return
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        fail("--mps needs nvidia-cuda-mps-control (NVIDIA's driver utilities) on PATH; run without --mps")
    folder = tempfile.mkdtemp(prefix="moe-rl-mps-")  # short: the pipe is a unix socket path
    mps_env = {"CUDA_MPS_PIPE_DIRECTORY": os.path.join(folder, "pipe"), "CUDA_MPS_LOG_DIRECTORY": os.path.join(folder, "log")}
    for path in mps_env.values():
        os.makedirs(path)
    env = {**os.environ, **mps_env}
    started = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        fail(f"nvidia-cuda-mps-control -d failed ({(started.stderr or started.stdout).strip() or started.returncode}); "
             "run without --mps")
    print(f"launch: MPS control daemon started (pipe {mps_env['CUDA_MPS_PIPE_DIRECTORY']})", flush=True)
    try:
        yield mps_env
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def run_local(run_dirs: list[str], opts) -> int:
    slots = make_slots(opts)
    if opts.mps and slots[0] is None:
        fail("--mps shares GPUs between runs, and no GPU is visible here (see --gpus and CUDA_VISIBLE_DEVICES)")
    with mps_daemon(opts.mps) as mps_env:
        return run_slots(run_dirs, slots, mps_env, opts)


def run_slots(run_dirs: list[str], slots: list[str | None], mps_env: dict, opts) -> int:
    threads = opts.threads_per_run or max(1, (os.cpu_count() or 1) // len(slots))
    where = f"{len(set(slots))} GPU(s) x {opts.runs_per_gpu}" if slots[0] is not None else f"the CPU, {len(slots)} at once"
    print(f"launch: {len(run_dirs)} run(s) on {where}, {threads} CPU thread(s) each", flush=True)
    queue, active, results = list(run_dirs), {}, {}
    free = list(slots)
    interrupted = []
    last_start = time.monotonic() + opts.start_within if opts.start_within else float("inf")

    def stop_all(signum, _frame):
        interrupted.append(signum)
        for proc in list(active):
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    while (queue and not interrupted and time.monotonic() < last_start) or active:
        while queue and free and not interrupted and time.monotonic() < last_start:
            run_dir, gpu = queue.pop(0), free.pop(0)
            env = {**os.environ, **mps_env, "OMP_NUM_THREADS": str(threads)}
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            cmd = [sys.executable, HERE, "--work", run_dir] + (["--keep-checkpoints"] if opts.keep_checkpoints else [])
            active[subprocess.Popen(cmd, env=env, start_new_session=True)] = (run_dir, gpu)
        time.sleep(0.2)
        for proc in [p for p in active if p.poll() is not None]:
            run_dir, gpu = active.pop(proc)
            free.append(gpu)
            status = read_state(run_dir)["status"]
            results[run_dir] = status
            note = f": {last_error(run_dir)}" if status == "failed" else ""
            print(f"[{len(results)}/{len(run_dirs)}] {status:<7} {os.path.basename(run_dir)}{note}", flush=True)
    if interrupted:
        print(f"launch: stopped; {len(run_dirs) - sum(s == 'done' for s in results.values())} run(s) left; "
              "the same command continues the sweep", flush=True)
        return 128 + interrupted[0]
    failed = [d for d, s in results.items() if s != "done"]
    print(f"launch: {len(results) - len(failed)} done, {len(failed)} failed" +
          (f" (logs: {os.path.join(failed[0], 'log.txt')}, ...; rerun with --retry-failed)" if failed else ""), flush=True)
    if queue:
        print(f"launch: {len(queue)} run(s) not started, {opts.start_within:g} s (--start-within) having passed; "
              "the same command continues the sweep", flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# Slurm: one job array; each task runs this launcher on its share of the runs
# ---------------------------------------------------------------------------------------------
def slurm_script(opts, runs_file: str, out_dir: str, tasks: int, per_task: int) -> str:
    sweep = os.path.basename(os.path.abspath(opts.sweep_dir))
    lines = ["#!/bin/bash", f"#SBATCH --job-name=moe-rl-{sweep}",
             f"#SBATCH --array=0-{tasks - 1}" + (f"%{opts.max_concurrent}" if opts.max_concurrent else ""),
             f"#SBATCH --output={out_dir}/%A_%a.out", f"#SBATCH --chdir={os.getcwd()}", "#SBATCH --ntasks=1"]
    lines += [f"#SBATCH --{name}={value}" for name, value in
              (("partition", opts.partition), ("time", opts.time), ("account", opts.account), ("qos", opts.qos),
               ("cpus-per-task", opts.cpus_per_task), ("mem", opts.mem)) if value]
    if opts.gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{opts.gpus_per_task}")
    lines += [f"#SBATCH {arg}" for arg in opts.sbatch_arg]
    cmd = [sys.executable, HERE, "--sweep-dir", os.path.abspath(opts.sweep_dir), "--runs-file", runs_file,
           "--runs-per-task", str(per_task), "--runs-per-gpu", str(opts.runs_per_gpu)]
    if not opts.gpus_per_task:
        cmd += ["--gpus", "", "--jobs", str(per_task)]
    if opts.keep_checkpoints:
        cmd.append("--keep-checkpoints")
    if opts.mps:
        cmd.append("--mps")
    lines += ["", "# one task: its share of the runs, on the GPUs (or CPUs) Slurm gave it",
              shlex.join(cmd) + ' --task-index "$SLURM_ARRAY_TASK_ID"', ""]
    return "\n".join(lines)


def shown_path(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def submit_slurm(run_dirs: list[str], opts) -> int:
    if not run_dirs:
        print("launch: nothing to submit: every run is done, failed (see --retry-failed), queued or running")
        return 0
    per_task = max(1, opts.gpus_per_task) * opts.runs_per_gpu
    tasks = (len(run_dirs) + per_task - 1) // per_task
    out_dir = os.path.abspath(os.path.join(opts.sweep_dir, ".slurm", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(out_dir, exist_ok=True)
    runs_file = os.path.join(out_dir, "runs.txt")
    with open(runs_file, "w") as f:
        f.writelines(os.path.abspath(d) + "\n" for d in run_dirs)
    script = os.path.join(out_dir, "job.sh")
    with open(script, "w") as f:
        f.write(slurm_script(opts, runs_file, out_dir, tasks, per_task))
    try:
        out = subprocess.run(["sbatch", "--parsable", script], capture_output=True, text=True, timeout=120)
    except OSError:
        fail("sbatch not found: --slurm needs a Slurm client on this machine (or run without --slurm)")
    if out.returncode != 0:
        fail(f"sbatch refused the job array ({out.stderr.strip() or out.stdout.strip()}); the script is {script}")
    job = out.stdout.strip().split(";")[0]
    for i, run_dir in enumerate(run_dirs):
        update_state(run_dir, status="queued", slurm_task=f"{job}_{i // per_task}", host=None, pid=None)
    print(f"launch: submitted {len(run_dirs)} run(s) as Slurm job array {job} ({tasks} task(s) of {per_task}); "
          f"script {script}; progress: python {shown_path(HERE)} --sweep-dir {opts.sweep_dir} --status")
    return 0


def task_share(opts) -> list[str]:
    with open(opts.runs_file) as f:
        run_dirs = [line.strip() for line in f if line.strip()]
    share = run_dirs[opts.task_index * opts.runs_per_task:(opts.task_index + 1) * opts.runs_per_task]
    statuses = classify(share)  # a rerun of the task (requeue) skips what already finished
    return [d for d in share if statuses[d] in ("pending", "queued", "stopped")]


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
def report(run_dirs: list[str], verbose: bool) -> int:
    statuses = classify(run_dirs)
    counts = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    order = ["done", "running", "queued", "pending", "stopped", "failed"]
    print(f"{len(run_dirs)} run(s): " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts), flush=True)
    for run_dir, status in statuses.items():
        if verbose or status == "failed":
            state = read_state(run_dir)
            where = state.get("slurm_task") or state.get("host") or ""
            note = f"  {state.get('error', '')}" if status == "failed" else ""
            print(f"  {status:<8} {os.path.basename(run_dir)}  {where}{note}")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--sweep-dir", help="the sweep's folder: one run folder per command")
    p.add_argument("--commands", help="file of commands, one per line (`-`: standard input)")
    p.add_argument("--dry-run", action="store_true", help="list the commands and their states; start nothing")
    p.add_argument("--status", action="store_true", help="how many runs are done, running, queued, failed")
    p.add_argument("--verbose", action="store_true", help="with --status or --dry-run: one line per run")
    p.add_argument("--retry-failed", action="store_true", help="start failed runs again")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep finished runs' checkpoint.pt (replay included)")
    p.add_argument("--gpus", default=None, help="GPU ids to use, e.g. 0,1 (default: all visible; empty: CPU only)")
    p.add_argument("--runs-per-gpu", type=int, default=1, help="runs sharing one GPU")
    p.add_argument("--jobs", type=int, default=0, help="runs at once without a GPU (default: cores / --threads-per-run, or / 2)")
    p.add_argument("--mps", action="store_true",
                   help="start NVIDIA's Multi-Process Service so that the runs sharing a GPU run their kernels side by side")
    p.add_argument("--threads-per-run", type=int, default=0, help="OMP/torch threads of a run (default: cores / runs at once)")
    p.add_argument("--longest-first", action="store_true",
                   help="start the runs expected to take longest first: by the median wall clock of the sweep's "
                        "finished runs of the same command but --seed (runs with none first); with --start-within, "
                        "a lent machine's runs then end closer together")
    p.add_argument("--by-game", action="store_true",
                   help="start the runs seed by seed and, within a seed, game by game (each game's runs in the "
                        "listed order): a machine lent for a fixed time ends with whole games, every "
                        "configuration on each, instead of every game begun")
    p.add_argument("--start-within", type=float, default=0,
                   help="start no run later than this many seconds after the launcher began (0: no limit); the runs "
                        "going then finish, the rest wait for the next launch: for a machine lent for a fixed time, "
                        "so that no run starts that cannot finish, and those that can get the whole GPU")
    s = p.add_argument_group("Slurm")
    s.add_argument("--slurm", action="store_true", help="submit the runs that are not done as a Slurm job array")
    s.add_argument("--partition", default="")
    s.add_argument("--time", default="", help="time limit of one array task, e.g. 2-00:00:00")
    s.add_argument("--gpus-per-task", type=int, default=1, help="GPUs of one array task (0: CPU-only)")
    s.add_argument("--cpus-per-task", type=int, default=0)
    s.add_argument("--mem", default="", help="memory of one array task, e.g. 64G")
    s.add_argument("--account", default="")
    s.add_argument("--qos", default="")
    s.add_argument("--max-concurrent", type=int, default=0, help="array tasks running at once (the %%N of --array)")
    s.add_argument("--sbatch-arg", action="append", default=[], help="another #SBATCH line, e.g. --sbatch-arg=--exclusive")
    p.add_argument("--work", help=argparse.SUPPRESS)  # internal: run one run folder
    p.add_argument("--runs-file", help=argparse.SUPPRESS)  # internal: a Slurm task's runs
    p.add_argument("--task-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--runs-per-task", type=int, default=1, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    for name in ("runs_per_gpu", "jobs", "threads_per_run", "gpus_per_task", "max_concurrent", "cpus_per_task", "start_within"):
        if getattr(opts, name) < 0 or (name == "runs_per_gpu" and opts.runs_per_gpu < 1):
            fail(f"--{name.replace('_', '-')} must be {'at least 1' if name == 'runs_per_gpu' else '0 or more'}")
    if opts.by_game and opts.longest_first:
        fail("--by-game and --longest-first are two orders: give one")
    if opts.slurm and opts.start_within:
        fail("--start-within is for runs started here; with --slurm, each task's --time limits its runs")
    if not opts.work and not opts.sweep_dir:
        fail("--sweep-dir is required: the folder that holds the sweep's runs")
    if not opts.work and not opts.runs_file and not opts.status and not opts.commands:
        fail("give --commands FILE (or - for standard input), or --status")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.work:
        return work(opts.work, opts.keep_checkpoints)
    if opts.runs_file:
        return run_local(task_share(opts), opts)
    if opts.status:
        return report(sweep_runs(opts.sweep_dir), opts.verbose)
    commands = read_commands(opts.commands)
    if opts.dry_run:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `--dry-run | head` ends quietly
        for command in commands:
            run_dir = os.path.join(opts.sweep_dir, run_id(command))
            status = read_state(run_dir)["status"] if os.path.isfile(state_path(run_dir)) else "new"
            print(f"{status:<8} {command}" if opts.verbose else command)
        print(f"# {len(commands)} command(s); sweep folder {opts.sweep_dir}", file=sys.stderr)
        return 0
    run_dirs = register(opts.sweep_dir, commands, os.getcwd())
    if opts.longest_first:
        run_dirs = longest_first(run_dirs, opts.sweep_dir)
    if opts.by_game:
        run_dirs = by_game(run_dirs)
    if opts.slurm:
        return submit_slurm(startable(run_dirs, opts.retry_failed), opts)
    with sweep_lock(opts.sweep_dir):  # before reading the states: a second launcher would start the same runs
        pending = startable(run_dirs, opts.retry_failed)
        return run_local(pending, opts) if pending else 0


if __name__ == "__main__":
    sys.exit(main())
