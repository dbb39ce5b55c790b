"""Running an agent script as a user does, for the end-to-end tests of every agent."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, args, runs_dir, timeout=300, env=None):
    """`python <script> <args> --runs-dir <runs_dir>` to completion."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args, "--runs-dir", str(runs_dir)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def only_run_dir(runs_dir):
    (name,) = [d for d in os.listdir(runs_dir) if os.path.isdir(os.path.join(runs_dir, d))]
    return os.path.join(runs_dir, name)


def records(run_dir):
    with open(os.path.join(run_dir, "summary.jsonl")) as f:
        return [json.loads(line) for line in f]


def checkpoint(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in last, last


def kill_after_first_checkpoint(script, flags, runs_dir, latest_step):
    """Start a run, SIGKILL it about a second after its first checkpoint appears (between two
    checkpoints or inside one), and return its run folder. Fails if the checkpoint it left is
    later than `latest_step`, which would leave nothing to test."""
    os.makedirs(runs_dir)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *flags, "--runs-dir", str(runs_dir)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        dirs = os.listdir(runs_dir)
        if dirs and os.path.exists(os.path.join(runs_dir, dirs[0], "checkpoint.pt")):
            break
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = only_run_dir(runs_dir)
    assert checkpoint(run_dir)["loop"]["step"] < latest_step, "the kill came too late to test anything"
    return run_dir


def assert_same_run(dir_a, dir_b, replay_fields):
    """Two finished runs hold the same networks, optimiser state, replay and per-iteration records."""
    a, b = checkpoint(dir_a), checkpoint(dir_b)
    for part in ("q_net", "target_net"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for k in replay_fields:
        assert torch.equal(a["replay"][k], b["replay"][k]), k
    drop = lambda r: {k: v for k, v in r.items() if k not in ("sps", "eval_seconds")}  # noqa: E731 - clocks, not results
    assert [drop(r) for r in records(dir_a)] == [drop(r) for r in records(dir_b)]


def fake_mps_control(tmp):
    """A stand-in for NVIDIA's nvidia-cuda-mps-control: `-d` marks its pipe folder up, `quit` on
    standard input marks it down; both are logged."""
    bin_dir, log = tmp / "bin", tmp / "mps.log"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(f"""#!/bin/sh
pipe="$CUDA_MPS_PIPE_DIRECTORY"
if [ "$1" = "-d" ]; then echo "start $pipe" >> {log}; touch "$pipe/up"
else read cmd; echo "$cmd $pipe" >> {log}; rm -f "$pipe/up"; fi
""")
    control.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log
