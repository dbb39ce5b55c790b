"""rainbow_moe_atari.py as a user runs it: real ALE games on the CPU, tiny networks, few steps."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_dqn_agent import assert_one_line_error, checkpoint, only_run_dir, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "rainbow_moe_atari.py")
TINY = ["--env-id", "Pong", "--impala-channels", "4", "8", "8", "--expert-hidden", "16", "--num-experts", "2",
        "--batch-size", "8", "--buffer-size", "2000", "--min-replay-history", "100", "--iteration-steps", "200",
        "--target-update-period", "40", "--log-every", "50", "--device", "cpu"]


def run(args, tmp_path, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args, "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_end_to_end_run(tmp_path):
    """Full Rainbow (C51, PER, 3-step, noisy, dueling, double) with a Soft MoE learns for 300 steps."""
    proc = run([*TINY, "--total-frames", "1600"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    recs = records(run_dir)
    assert recs[-1]["final"] and recs[-1]["agent"] == "rainbow" and [r["step"] for r in recs[:-1]] == [200, 400]
    ckpt = checkpoint(run_dir)
    prio = ckpt["replay"]["priorities"]
    assert len(prio) == ckpt["replay"]["added"]
    assert (prio != 1.0).sum() > 0  # updates changed priorities away from the initial maximum
    assert any(k.endswith("sigma_w1") for k in ckpt["q_net"])  # noisy experts
    assert "value.sigma_weight" in ckpt["q_net"]  # noisy dueling head


@pytest.mark.parametrize("flags", [
    ["--no-noisy", "--no-dueling", "--no-double", "--no-prioritized", "--num-atoms", "1", "--moe", "top1"],
    ["--moe", "none", "--encoder", "nature", "--n-step", "1", "--replay-ratio", "1"],
    ["--moe-variant", "all", "--tokenizer", "samp"],
])
def test_ablations_run(tmp_path, flags):
    """Every Rainbow component can be switched off, with each kind of penultimate layer."""
    proc = run([*TINY, "--total-frames", "600", *flags], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    """A killed Rainbow run resumes exactly: networks, optimiser, replay and its priorities."""
    flags = [*TINY, "--total-frames", "2000", "--checkpoint-every", "150"]
    whole = run(flags, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    (tmp_path / "killed").mkdir()
    proc = subprocess.Popen([sys.executable, SCRIPT, *flags, "--runs-dir", str(tmp_path / "killed")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        dirs = os.listdir(tmp_path / "killed")
        if dirs and os.path.exists(tmp_path / "killed" / dirs[0] / "checkpoint.pt"):
            break
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_dir = only_run_dir(tmp_path / "killed")
    assert checkpoint(killed_dir)["loop"]["step"] < 500, "the kill came too late to test anything"
    resumed = run([*flags, "--resume", killed_dir], tmp_path / "unused")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = checkpoint(only_run_dir(tmp_path / "whole")), checkpoint(killed_dir)
    for part in ("q_net", "target_net"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for k in ("frames", "actions", "rewards", "priorities", "max_priority"):
        assert torch.equal(a["replay"][k], b["replay"][k]), k
    drop = lambda r: {k: v for k, v in r.items() if k != "sps"}  # noqa: E731
    assert [drop(r) for r in records(only_run_dir(tmp_path / "whole"))] == [drop(r) for r in records(killed_dir)]


@pytest.mark.parametrize("flags, needle", [
    (["--num-atoms", "0"], "--num-atoms"),
    (["--v-max", "-1"], "--v-max"),
    (["--env-id", "Pongg"], "unknown game"),
])
def test_bad_flags(tmp_path, flags, needle):
    assert_one_line_error(run(flags, tmp_path, timeout=60), needle)
