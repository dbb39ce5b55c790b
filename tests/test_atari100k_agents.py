"""der_moe_atari100k.py and drq_moe_atari100k.py as a user runs them: a real game (Breakout, which
has lives) on the CPU, tiny networks, a few hundred steps, evaluation episodes included."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from agent_runs import ROOT, assert_one_line_error, assert_same_run, checkpoint, kill_after_first_checkpoint, only_run_dir, records
from agent_runs import run

TINY = ["--env-id", "Breakout", "--encoder", "impala", "--impala-channels", "4", "8", "8", "--expert-hidden", "16",
        "--num-experts", "2", "--batch-size", "8", "--min-replay-history", "100", "--iteration-steps", "100",
        "--log-every", "50", "--device", "cpu", "--eval-episodes", "2", "--max-episode-frames", "1000"]
DER = ("der_moe_atari100k.py", [*TINY, "--target-update-period", "40"])
DRQ = ("drq_moe_atari100k.py", TINY)
DRQ_CUT = ("drq_moe_atari100k.py", [*TINY, "--life-loss-frame-skip", "cut_2021"])


def finished_run(agent, extra, runs_dir):
    script, flags = agent
    proc = run(script, [*flags, *extra], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(runs_dir)


def test_der_end_to_end(tmp_path):
    """DER (C51, PER, 10-step, noisy, dueling, double) with a Soft MoE: training iterations, one
    evaluation of 2 episodes at the end whose mean is the final score, and a replay allocated for
    the rows the run can write."""
    run_dir = finished_run(DER, ["--total-steps", "300"], tmp_path)
    recs = records(run_dir)
    assert [r["step"] for r in recs if "iteration" in r] == [100, 200, 300]
    (ev,) = [r for r in recs if r.get("eval")]
    assert ev["step"] == 300 and ev["eval_episodes"] == 2 and len(ev["eval_returns"]) == 2
    assert ev["eval_return"] == pytest.approx(sum(ev["eval_returns"]) / 2)
    assert len(ev["eval_lengths"]) == 2 and 0 < max(ev["eval_lengths"]) <= ev["eval_vector_steps"]
    counts = ev["eval_greedy_counts"]  # the network's choices, one count per action, over the episodes' agent steps
    assert len(counts) == 4 and sum(counts) == sum(ev["eval_lengths"])  # Breakout: 4 actions
    assert math.isfinite(ev["eval_greedy_q_median"]) and ev["eval_q_margin_median"] >= 0
    assert ev["eval_seconds"] >= 0 and ev["eval_threads"] == min(2, len(os.sched_getaffinity(0)))
    final = recs[-1]
    assert final["final"] and final["agent"] == "der" and final["score"] == ev["eval_return"]
    ckpt = checkpoint(run_dir)
    assert ckpt["replay"]["capacity"] == 2 * 300 + 8
    assert (ckpt["replay"]["priorities"] != 1.0).any()
    assert any(k.endswith("sigma_w1") for k in ckpt["q_net"])
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["n_step"] == 10 and config["update_period"] == 1 and not config["sticky_actions"]


def test_drq_end_to_end_target_is_online_network(tmp_path):
    """DrQ(eps): scalar Q with augmentation, uniform replay, epsilon decaying after 100 steps, and a
    target network synced every update, i.e. the online network itself."""
    run_dir = finished_run(DRQ, ["--total-steps", "300"], tmp_path)
    recs = records(run_dir)
    assert recs[-1]["agent"] == "drq" and recs[-1]["score"] is not None
    ckpt = checkpoint(run_dir)
    assert "priorities" not in ckpt["replay"]
    assert all(torch.equal(ckpt["q_net"][k], ckpt["target_net"][k]) for k in ckpt["q_net"])
    assert not any("sigma" in k for k in ckpt["q_net"])
    assert ckpt["q_net"]["advantage.weight"].shape[0] == 4  # Breakout's 4 actions x 1 atom


@pytest.mark.parametrize("life_loss", [True, False])
def test_life_loss_ends_the_agents_episode_not_the_game(tmp_path, life_loss):
    """With --terminal-on-life-loss (default) every lost life writes a terminal transition while
    the game goes on, and the next row starts the agent's next episode (a fresh stack, ep_pos 0)
    without a final row: the replay holds several terminal rows per game (Breakout has 5 lives)
    and a final row per game over. Without it, one terminal row per game."""
    flag = [] if life_loss else ["--no-terminal-on-life-loss"]
    run_dir = finished_run(DRQ, ["--total-steps", "600", "--eval-episodes", "0", "--min-replay-history", "600", *flag],
                           tmp_path)
    episodes = sum(r["episodes"] for r in records(run_dir) if "iteration" in r)
    replay = checkpoint(run_dir)["replay"]
    final, terminated, ep_pos = replay["final"], replay["terminated"], replay["ep_pos"]
    finals, terminals = int(final.sum()), int(terminated.sum())
    assert episodes >= 1 and episodes - 1 <= finals <= episodes  # the last game over may not be restarted yet
    if life_loss:
        assert terminals >= 3 * episodes
        lost = terminated[:-1] & ~final[1:]  # a terminal row the game goes on from
        assert int(lost.sum()) >= 2 * episodes and (ep_pos[1:][lost] == 0).all()
    else:
        assert episodes - 1 <= terminals <= episodes


@pytest.mark.parametrize("unit", ["step", "frame"])
def test_games_start_with_noops_that_are_not_agent_steps(tmp_path, monkeypatch, unit):
    """Every game starts with 0..max_noops-1 NOOPs of the emulator before the agent's first step:
    agent steps of 4 frames, or with --noop-unit frame single frames (the 2021 official runner);
    with one environment they store no replay row and count no agent step. Seen from the replay:
    the first row of each game is written when the emulator's episode frame number is 4 x the
    no-ops (or the no-ops), and the rows are the agent steps plus a final row per game over. The
    evaluation's environments take frame no-ops at reset (ale-py's) and no no-op steps."""
    import drq_moe_atari100k as drq

    envs, first_frames, previous_final, eval_noop_frames = [], [], [True], []
    init, start_rows, make_vector_env = drq.AtariEnvs.__init__, drq.FrameReplay.start_rows, drq.make_vector_env

    def recording_init(self, *a, **k):
        init(self, *a, **k)
        envs.append(self)

    def recording_start_rows(self, frames, final, starts=None):
        if previous_final[0] and not final[0]:  # the first agent step of a game
            first_frames.append(envs[0].env.env.unwrapped.ale.getEpisodeFrameNumber())
        previous_final[0] = bool(final[0])
        start_rows(self, frames, final, starts)

    def recording_vector_env(*a, noop_frames=0, **k):
        eval_noop_frames.append(noop_frames)
        return make_vector_env(*a, noop_frames=noop_frames, **k)

    monkeypatch.setattr(drq.AtariEnvs, "__init__", recording_init)
    monkeypatch.setattr(drq.FrameReplay, "start_rows", recording_start_rows)
    monkeypatch.setattr(drq, "make_vector_env", recording_vector_env)
    args = drq.Args(env_id="Breakout", device="cpu", runs_dir=str(tmp_path), encoder="impala", impala_channels=(4, 8, 8),
                    expert_hidden=16, num_experts=2, batch_size=8, total_steps=1200, min_replay_history=1200,
                    iteration_steps=600, eval_episodes=2, max_episode_frames=400, log_every=10**9, noop_unit=unit)
    drq.main(args)
    games = len(first_frames)
    assert games >= 8  # 100 agent steps at most per game
    noops = [f // 4 if unit == "step" else f for f in first_frames]
    assert all(n < 30 for n in noops) and len(set(noops)) >= 3
    if unit == "step":
        assert all(f % 4 == 0 for f in first_frames)
    else:
        assert any(f % 4 for f in first_frames)
    assert eval_noop_frames == [30 if unit == "frame" else 0]
    replay = checkpoint(only_run_dir(tmp_path))["replay"]
    assert replay["added"] == 1200 + int(replay["final"].sum()) and int(replay["final"].sum()) in (games - 1, games)


def test_k_envs_keep_the_updates_per_agent_step(tmp_path):
    """With 3 environments, DrQ(eps) makes the updates and the iterations of a one-environment
    run of the same length (one update per agent step after --min-replay-history); the replay
    holds a row per environment per vector step: the agent steps, a final row per game over and
    one per no-op of a game's start."""
    counts, steps = {}, {}
    for k in (1, 3):
        run_dir = finished_run(DRQ, ["--total-steps", "300", "--eval-episodes", "0", "--max-episode-frames", "200",
                                     "--num-envs", str(k)], tmp_path / f"k{k}")
        ckpt, recs = checkpoint(run_dir), records(run_dir)
        counts[k] = int(next(iter(ckpt["optimizer"]["state"].values()))["step"])
        steps[k] = recs[-1]["step"]
        iterations = [r["step"] for r in recs if "iteration" in r]
        assert len(iterations) == 3 and all(0 <= s - 100 * (i + 1) < k for i, s in enumerate(iterations))
        replay = ckpt["replay"]
        agent_rows = int((~replay["final"][:replay["added"]]).sum())
        assert replay["streams"] == k and replay["added"] % k == 0 and agent_rows == steps[k]
        if k == 3:
            assert sum(r["episodes"] for r in recs if "iteration" in r) >= 3  # games of 50 steps at most
    assert steps[1] == 300 and 300 <= steps[3] < 303
    assert counts[1] == 200 and counts[3] == steps[3] - 100


def test_k_envs_resume_after_sigkill(tmp_path):
    """A killed 2-environment run resumes from its checkpoint: the games in progress end as
    truncated ones (the vector env cannot save its emulators), every iteration is recorded once,
    and the run makes one update per agent step after --min-replay-history."""
    script, flags = DRQ
    flags = [*flags, "--total-steps", "400", "--num-envs", "2", "--checkpoint-every", "100", "--eval-episodes", "0"]
    killed = kill_after_first_checkpoint(script, flags, tmp_path / "killed", latest_step=300)
    before = checkpoint(killed)["loop"]["step"]
    resumed = run(script, [*flags, "--resume", killed], tmp_path / "unused")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["iteration"] for r in records(killed) if "iteration" in r] == [0, 1, 2, 3]
    ckpt = checkpoint(killed)
    final = ckpt["loop"]["step"]
    assert 400 <= final < 402 and final > before
    assert int(next(iter(ckpt["optimizer"]["state"].values()))["step"]) == final - 100


def test_periodic_evaluation_leaves_training_unchanged(tmp_path):
    """--eval-every 100 evaluates at steps 100 and 200; DrQ's training records are the same as a
    run that evaluates only at the end (evaluation uses its own random numbers)."""
    periodic = finished_run(DRQ, ["--total-steps", "200", "--eval-every", "100"], tmp_path / "a")
    once = finished_run(DRQ, ["--total-steps", "200"], tmp_path / "b")
    evals = [r["step"] for r in records(periodic) if r.get("eval")]
    assert evals == [100, 200]
    train = lambda d: [{k: v for k, v in r.items() if k != "sps"} for r in records(d) if "iteration" in r]  # noqa: E731
    assert train(periodic) == train(once)
    assert records(periodic)[-1]["score"] == records(once)[-1]["score"]


@pytest.mark.parametrize("agent, fields", [
    (DER, ("frames", "actions", "rewards", "terminated", "priorities", "max_priority")),
    (DRQ, ("frames", "actions", "rewards", "terminated")),
    (DRQ_CUT, ("frames", "actions", "rewards", "terminated")),
])
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, agent, fields):
    """A killed run resumes exactly: networks, optimiser, replay (priorities), the life counter,
    per-iteration and evaluation records; with the frame skip cut at a lost life, the screens
    that a cut step reads too."""
    script, flags = agent
    flags = [*flags, "--total-steps", "400", "--checkpoint-every", "150", "--eval-every", "200"]
    whole = run(script, flags, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed_dir = kill_after_first_checkpoint(script, flags, tmp_path / "killed", latest_step=350)
    resumed = run(script, [*flags, "--resume", killed_dir], tmp_path / "unused")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(only_run_dir(tmp_path / "whole"), killed_dir, fields)


def test_long_schedule_sets_50m_frames(tmp_path):
    """--long-schedule (figures 12/16) trains for 12.5M agent steps with an evaluation every 250k."""
    os.makedirs(tmp_path / "runs")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "der_moe_atari100k.py"), *DER[1], "--long-schedule",
                             "--runs-dir", str(tmp_path / "runs")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        config = None
        while time.time() < deadline and config is None:
            dirs = os.listdir(tmp_path / "runs")
            path = os.path.join(tmp_path, "runs", dirs[0], "config.json") if dirs else ""
            if path and os.path.exists(path) and os.path.getsize(path):
                time.sleep(0.2)
                config = json.load(open(path))
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert config is not None
    assert config["total_steps"] == 12_500_000 and config["eval_every"] == 250_000


def test_a_saved_model_is_evaluated_again_under_other_protocol_flags(tmp_path):
    """--save-model writes the trained network; --eval-model with the run's own flags repeats the
    run's final evaluation episode for episode, without training, as a finished run of its own;
    with --noop-unit frame it evaluates the same network under the 2021 no-op starts; a model of
    another game or of other network flags fails in one line that says what to pass."""
    trained = finished_run(DRQ, ["--total-steps", "300", "--save-model"], tmp_path / "train")
    model = os.path.join(trained, "model.pt")
    saved = torch.load(model, weights_only=False)
    assert saved["step"] == 300 and saved["env_id"] == "ALE/Breakout-v5"
    assert all(torch.equal(saved["q_net"][k], v) for k, v in checkpoint(trained)["q_net"].items())
    (first,) = [r for r in records(trained) if r.get("eval")]
    again = finished_run(DRQ, ["--eval-model", model], tmp_path / "again")
    recs = records(again)
    (ev,) = [r for r in recs if r.get("eval")]
    assert ev["step"] == 300 and ev["eval_returns"] == first["eval_returns"] and ev["eval_lengths"] == first["eval_lengths"]
    assert not [r for r in recs if "iteration" in r] and recs[-1]["final"] and recs[-1]["score"] == first["eval_return"]
    assert not os.path.exists(os.path.join(again, "checkpoint.pt"))
    assert json.load(open(os.path.join(again, "config.json")))["eval_model"] == model
    frames = finished_run(DRQ, ["--eval-model", model, "--noop-unit", "frame"], tmp_path / "frames")
    (ev,) = [r for r in records(frames) if r.get("eval")]
    assert ev["eval_episodes"] == 2 and ev["eval_lengths"] != first["eval_lengths"]
    assert_one_line_error(run("drq_moe_atari100k.py", [*TINY, "--env-id", "Pong", "--eval-model", model], tmp_path),
                          "was trained on ALE/Breakout-v5")
    assert_one_line_error(run("drq_moe_atari100k.py", [*TINY, "--num-experts", "4", "--eval-model", model], tmp_path),
                          "--num-experts")


@pytest.mark.parametrize("flags, needle", [
    (["--eval-model", "/no/model.pt"], "no such file"),
    (["--eval-episodes", "-1"], "--eval-episodes"),
    (["--eval-epsilon", "2"], "--eval-epsilon"),
    (["--max-noops", "-3"], "--max-noops"),
    (["--total-steps", "0"], "--total-steps"),
    (["--env-id", "Breakoutt"], "unknown game"),
    (["--num-envs", "0"], "--num-envs"),
    (["--num-envs", "2", "--capture-video"], "--capture-video"),
    (["--shift-per", "batch", "--no-data-augmentation"], "--shift-per batch"),
    (["--noop-unit", "frame", "--num-envs", "2"], "--noop-unit frame"),
    (["--life-loss-frame-skip", "cut", "--num-envs", "2"], "--life-loss-frame-skip cut"),
    (["--life-loss-frame-skip", "cut_2021", "--no-terminal-on-life-loss"], "--terminal-on-life-loss"),
])
def test_bad_flags(tmp_path, flags, needle):
    assert_one_line_error(run("drq_moe_atari100k.py", flags, tmp_path, timeout=60), needle)
