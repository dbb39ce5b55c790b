"""dqn_moe_atari.py as a user runs it: real ALE games on the CPU, tiny networks, few steps."""

import json
import os

import pytest
import torch

from agent_runs import (assert_one_line_error, assert_same_run, checkpoint, kill_after_first_checkpoint, only_run_dir,
                        records)
from agent_runs import run as run_script

SCRIPT = "dqn_moe_atari.py"
TINY = ["--env-id", "Pong", "--impala-channels", "4", "8", "8", "--expert-hidden", "16", "--num-experts", "4",
        "--batch-size", "8", "--buffer-size", "2000", "--min-replay-history", "100", "--iteration-steps", "200",
        "--target-update-period", "40", "--log-every", "50", "--device", "cpu"]


def run(args, runs_dir, timeout=300, env=None):
    return run_script(SCRIPT, args, runs_dir, timeout, env)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """400 agent steps of Soft MoE DQN on Pong: 100 of random acting, then learning."""
    runs = tmp_path_factory.mktemp("runs")
    proc = run([*TINY, "--total-frames", "1600", "--save-model"], runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(runs)


def test_end_to_end_run_writes_its_outputs(finished_run):
    recs = records(finished_run)
    iterations, final = recs[:-1], recs[-1]
    assert [r["iteration"] for r in iterations] == [0, 1] and [r["step"] for r in iterations] == [200, 400]
    assert final["final"] and final["step"] == 400 and final["game"] == "Pong"
    for key in ("dormant_official_pct", "dormant_fraction", "feature_norm", "srank", "srank_official",
                "combine_entropy", "expert_load/0", "expert_load/3"):
        assert key in iterations[-1], key
    loads = [iterations[-1][f"expert_load/{i}"] for i in range(4)]
    assert abs(sum(loads) - 1) < 1e-4  # combine weights of every token sum to one over the experts
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(finished_run))
    with open(os.path.join(finished_run, "config.json")) as f:
        assert json.load(f)["env_id"] == "ALE/Pong-v5"
    ckpt = checkpoint(finished_run)
    # one replay row per agent step, plus one holding the final frame of each finished episode
    assert ckpt["loop"]["step"] == 400 and ckpt["replay"]["added"] == 400 + sum(r["episodes"] for r in iterations)
    assert all(torch.isfinite(p).all() for p in ckpt["q_net"].values())
    model = torch.load(os.path.join(finished_run, "model.pt"), weights_only=False)  # --save-model
    assert model["step"] == 400 and model["env_id"] == "ALE/Pong-v5" and model["args"]["num_experts"] == 4
    assert model["q_net"].keys() == ckpt["q_net"].keys()
    assert all(torch.equal(model["q_net"][k], v) for k, v in ckpt["q_net"].items())


def test_other_flags_run(tmp_path):
    """Nature CNN, Top1 with noisy routing and both auxiliary losses, 3-step returns, replay ratio 2."""
    args = [*TINY, "--total-frames", "600", "--encoder", "nature", "--moe", "top1", "--router-noise",
            "--importance-loss-weight", "1", "--load-loss-weight", "1", "--n-step", "3", "--replay-ratio", "2",
            "--tokenizer", "feat", "--loss", "huber"]
    proc = run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = records(only_run_dir(tmp_path))[0]
    assert "dropped_tokens" in rec and "router_entropy" in rec


RESUMED = [*TINY, "--total-frames", "2000", "--checkpoint-every", "150"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("whole")
    whole = run(RESUMED, runs)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return only_run_dir(runs)


@pytest.mark.parametrize("emulator", [[], ["--emulator-process"]])
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, uninterrupted_run, emulator):
    """Kill a run (SIGKILL) at some moment after its first checkpoint; resuming it gives exactly
    the networks, optimiser, replay and scores of the run that was never interrupted. With
    --emulator-process the killed and the resumed run step their emulator in a child process,
    and still equal the run that stepped it in its own."""
    killed_dir = kill_after_first_checkpoint(SCRIPT, [*RESUMED, *emulator], tmp_path / "killed", latest_step=500)
    resumed = run([*RESUMED, *emulator, "--resume", killed_dir], tmp_path / "unused")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(uninterrupted_run, killed_dir,
                    ("frames", "actions", "rewards", "terminated", "final", "ep_pos"))


def test_unknown_game(tmp_path):
    assert_one_line_error(run(["--env-id", "Pongg"], tmp_path), "unknown game 'Pongg'", "Pong")


@pytest.mark.parametrize("flags, needle", [
    (["--num-experts", "0"], "--num-experts must be at least 1"),
    (["--moe-variant", "big", "--tokenizer", "feat"], "--moe-variant big"),
    (["--moe-variant", "all", "--moe", "top1"], "use --moe soft"),
    (["--moe-variant", "all"], "--tokenizer samp"),
    (["--env-id", "CartPole-v1"], "not an Atari game"),
    (["--moe", "soft", "--scale-hidden"], "--scale-hidden"),
    (["--moe", "none", "--random-phi"], "--random-phi"),
    (["--replay-ratio", "0.3"], "--replay-ratio"),
    (["--encoder", "nature", "--filter-size", "5"], "--filter-size"),
])
def test_flags_that_cannot_work(tmp_path, flags, needle):
    assert_one_line_error(run(flags, tmp_path, timeout=60), needle)


def test_resume_with_other_flags_is_refused(finished_run, tmp_path):
    proc = run([*TINY, "--total-frames", "2000", "--resume", finished_run, "--num-experts", "8"], tmp_path)
    assert_one_line_error(proc, "--num-experts 4, not 8")


def test_corrupt_checkpoint_is_refused(finished_run, tmp_path):
    bad = tmp_path / "bad_run"
    bad.mkdir()
    data = open(os.path.join(finished_run, "checkpoint.pt"), "rb").read()
    (bad / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run([*TINY, "--resume", str(bad)], tmp_path), "corrupt")
    assert_one_line_error(run([*TINY, "--resume", str(tmp_path / "nowhere")], tmp_path), "no checkpoint")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run([*TINY, "--total-frames", "2000", "--learning-rate", "1e30", "--checkpoint-every", "100"], tmp_path)
    assert_one_line_error(proc, "NaN", "checkpoint")
    ckpt = checkpoint(only_run_dir(tmp_path))
    assert ckpt["loop"]["step"] == 100
    assert all(torch.isfinite(p).all() for p in ckpt["q_net"].values())


def test_wandb_offline_and_video(tmp_path):
    proc = run([*TINY, "--total-frames", "4000", "--min-replay-history", "5000", "--track", "--capture-video"],
               tmp_path, env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert os.path.isdir(os.path.join(run_dir, "wandb"))
    assert any(f.endswith(".mp4") for f in os.listdir(os.path.join(run_dir, "videos")))


def filled_replay(dqn, rows: int = 300):
    """A uniform replay of random frames, actions and rewards, with an episode end now and then."""
    import numpy as np

    replay = dqn.FrameReplay(1000, (84, 84), 4, 1, 0.99, "cpu")
    rng = np.random.default_rng(0)
    for i in range(rows):
        replay.add(rng.integers(0, 256, size=(84, 84), dtype=np.uint8), int(rng.integers(6)), float(rng.normal()),
                   bool(i % 97 == 96))
    replay.flush()
    return replay


@pytest.mark.parametrize("moe", ["soft", "top1"])
def test_update_step_is_one_adam_step_on_the_td_loss(moe):
    """make_update_step (its pieces, the target network beside the online one, which on the CPU
    run one after the other) is one Adam step on the MSE between Q(s, a) and r + gamma max_a'
    Q_target(s', a'), computed here directly on the batch the same random draws give; with Top1,
    plus the weighted importance and load losses."""
    import copy

    import dqn_moe_atari as dqn

    args = dqn.Args(env_id="Pong", impala_channels=(4, 8, 8), expert_hidden=16, num_experts=4, batch_size=8,
                    moe=moe, device="cpu", learning_rate=1e-3,
                    **(dict(importance_loss_weight=0.1, load_loss_weight=0.1) if moe == "top1" else {}))
    torch.manual_seed(0)
    q_net, target_net = dqn.QNetwork(args, 6), dqn.QNetwork(args, 6).requires_grad_(False)
    mine, my_target = copy.deepcopy(q_net), copy.deepcopy(target_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    my_optimizer = torch.optim.Adam(mine.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    replay = filled_replay(dqn)
    start = copy.deepcopy(q_net)
    step = dqn.make_update_step(args, q_net, target_net, optimizer, replay)
    for _ in range(2):
        rng = torch.get_rng_state()
        loss = step()
        after = torch.get_rng_state()
        torch.set_rng_state(rng)
        batch = replay.sample(args.batch_size)
        with torch.no_grad():
            y = batch["return"] + batch["discount"] * my_target(batch["next_obs"]).max(dim=1).values
        q, _, aux = mine(batch["obs"], with_aux=True)
        td = (q[torch.arange(args.batch_size), batch["action"]] - y).pow(2).mean()
        total = td
        if moe == "top1":
            total = total + 0.1 * dqn.importance_loss(aux["probs"]) + 0.1 * dqn.load_loss(aux["logits"], 0.25)
        my_optimizer.zero_grad()
        total.backward()
        my_optimizer.step()
        assert torch.allclose(loss, td, atol=1e-6)
        assert torch.equal(torch.get_rng_state(), after)  # the same random draws, in the same order
    for (name, p), theirs in zip(mine.named_parameters(), q_net.parameters()):
        assert torch.allclose(p, theirs, atol=1e-6), name
    assert all(not torch.equal(p, p0) for p, p0 in zip(q_net.parameters(), start.parameters()) if p.grad is not None)
