"""rainbow_moe_atari.py as a user runs it: real ALE games on the CPU, tiny networks, few steps."""

import os

import pytest
import torch

from agent_runs import assert_one_line_error, assert_same_run, checkpoint, kill_after_first_checkpoint, only_run_dir, records
from agent_runs import run as run_script

SCRIPT = "rainbow_moe_atari.py"
TINY = ["--env-id", "Pong", "--impala-channels", "4", "8", "8", "--expert-hidden", "16", "--num-experts", "2",
        "--batch-size", "8", "--buffer-size", "2000", "--min-replay-history", "100", "--iteration-steps", "200",
        "--target-update-period", "40", "--log-every", "50", "--device", "cpu"]


def run(args, runs_dir, timeout=300):
    return run_script(SCRIPT, args, runs_dir, timeout)


def test_end_to_end_run(tmp_path):
    """Full Rainbow (C51, PER, 3-step, noisy, dueling, double) with a Soft MoE learns for 300 steps."""
    proc = run([*TINY, "--total-frames", "1600", "--save-model"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    recs = records(run_dir)
    assert recs[-1]["final"] and recs[-1]["agent"] == "rainbow" and [r["step"] for r in recs[:-1]] == [200, 400]
    ckpt = checkpoint(run_dir)
    model = torch.load(os.path.join(run_dir, "model.pt"), weights_only=False)  # --save-model: the final weights
    assert model["step"] == 400 and all(torch.equal(model["q_net"][k], v) for k, v in ckpt["q_net"].items())
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
    """A killed Rainbow run resumes exactly: networks, optimiser, replay and its priorities. A run
    that finished at an iteration's end (200 steps), resumed with a larger --total-frames, is
    the same run too, its first final record dropped."""
    flags = [*TINY, "--total-frames", "1600", "--checkpoint-every", "150"]
    whole = run(flags, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed_dir = kill_after_first_checkpoint(SCRIPT, flags, tmp_path / "killed", latest_step=390)
    resumed = run([*flags, "--resume", killed_dir], tmp_path / "unused")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fields = ("frames", "actions", "rewards", "priorities", "max_priority")
    assert_same_run(only_run_dir(tmp_path / "whole"), killed_dir, fields)
    short = run([*TINY, "--total-frames", "800", "--checkpoint-every", "150"], tmp_path / "short")
    assert short.returncode == 0, short.stderr[-3000:]
    extended = run([*flags, "--resume", only_run_dir(tmp_path / "short")], tmp_path / "unused")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert_same_run(only_run_dir(tmp_path / "whole"), only_run_dir(tmp_path / "short"), fields)


@pytest.mark.parametrize("flags, needle", [
    (["--num-atoms", "0"], "--num-atoms"),
    (["--v-max", "-1"], "--v-max"),
    (["--env-id", "Pongg"], "unknown game"),
])
def test_bad_flags(tmp_path, flags, needle):
    assert_one_line_error(run(flags, tmp_path, timeout=60), needle)
