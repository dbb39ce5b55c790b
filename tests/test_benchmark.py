"""The speed benchmark keeps running (CPU smoke: tiny sizes; the real numbers come from a GPU)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from agent_runs import fake_mps_control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_atari_quick(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, "benchmark/bench_atari.py", "--agent", "rainbow", "--quick", "--no-training",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["agent"] == "rainbow" and {r["config"] for r in result["runs"]} == {"baseline", "softmoe8"}
    assert all(r["update_ms_median"] > 0 and r["params"] > 0 for r in result["runs"])


def test_bench_atari100k_quick(tmp_path):
    """A warm-up run, then two tiny DrQ runs share the machine, through MPS (a stand-in daemon: on
    the CPU the runs ignore it); every row has a time, a score and a steps/s."""
    out = tmp_path / "speed100k.json"
    env, log = fake_mps_control(tmp_path)
    proc = subprocess.run([sys.executable, "benchmark/bench_atari100k.py", "--quick", "--parts", "parallel",
                           "--parallel", "2", "--pairs", "drq:baseline", "--mps", "--warm", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["runs"]
    runs = [r for r in rows if r["part"] == "parallel"]
    (total,) = [r for r in rows if r["part"] == "throughput"]
    assert [r["part"] for r in rows][0] == "warm-up" and [r["part"] for r in rows].count("warm-up") == 1
    assert len(runs) == 2 and all(r["seconds"] > 0 and r["score"] is not None and r["train_sps_median"] > 0 for r in runs)
    assert total["parallel"] == 2 and total["runs_per_hour"] > 0 and total["mps"]
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "quit"]


def test_perf_quick(tmp_path):
    """perf.py's three parts on the CPU: latency, a 2-environment training segment, two seeds at once."""
    out = tmp_path / "perf.json"
    env, log = fake_mps_control(tmp_path)
    proc = subprocess.run([sys.executable, "benchmark/perf.py", "--quick", "--agents", "dqn", "--configs", "softmoe8",
                           "--train-modes", "eager", "--num-envs", "2", "--seeds-at-once", "2", "--mps", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (latency,), (training,), (seeds,) = result["latency"], result["training"], result["seeds"]
    assert latency["update_ms_median"] > 0 and latency["mode"] == "eager"
    assert training["num_envs"] == 2 and training["train_sps"] > 0 and training["updates_per_s"] == training["train_sps"] / 4
    assert seeds["seeds_at_once"] == 2 and len(seeds["sps_per_run"]) == 2 and seeds["sps_total"] == sum(seeds["sps_per_run"])
    assert seeds["mps"] and [line.split()[0] for line in log.read_text().splitlines()] == ["start", "quit"]
    assert "| 2 | yes | 1 |" in proc.stdout  # the seeds table


def test_seed_batched_update_is_independent_agents():
    """vmap_seeds.py's batched step over 3 seeds gives, after two updates, every seed the
    parameters its own DQN update (the agent's online_q, td_loss and td_target, its own Adam) gives."""
    import copy

    import torch

    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import dqn_moe_atari as dqn
    from bench_atari import filled_replay
    from vmap_seeds import SeedBatch, seed_batches

    args = dqn.Args(env_id="Pong", impala_channels=(4, 8, 8), expert_hidden=16, num_experts=4, batch_size=8,
                    buffer_size=2000, device="cpu", learning_rate=1e-3)
    seeds = [1, 2, 3]
    group = SeedBatch(args, 6, seeds, "cpu")
    replay = filled_replay(dqn, args, "cpu", rows=600)
    batches = [seed_batches(replay, len(seeds), args.batch_size) for _ in range(2)]
    for batch in batches:
        group.update(batch)
    for s, seed in enumerate(seeds):
        torch.manual_seed(seed)
        net = dqn.QNetwork(args, 6)
        target = copy.deepcopy(net).requires_grad_(False)
        opt = torch.optim.Adam(net.parameters(), lr=args.learning_rate, eps=args.adam_eps)
        for batch in batches:
            mine = {k: v[s] for k, v in batch.items()}
            total, _ = dqn.td_loss(args, dqn.online_q(args, net, mine), mine, dqn.td_target(target, mine))
            opt.zero_grad()
            total.backward()
            opt.step()
        moved = 0
        for name, p in net.named_parameters():
            assert torch.allclose(group.params[name][s], p, atol=1e-6), (seed, name)
            moved += int(not torch.equal(group.target[name][s], p))
        assert moved > 0  # the updates changed the parameters


def test_vmap_seeds_quick(tmp_path):
    out = tmp_path / "vmap.json"
    proc = subprocess.run([sys.executable, "benchmark/vmap_seeds.py", "--quick", "--seeds", "1,2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["seeds"] for r in rows] == [1, 2] and all(r["update_ms"] > 0 for r in rows)
    assert rows[1]["speedup_vs_separate"] > 0


def test_perf_quick_atari100k_agents(tmp_path):
    """perf.py gives the Atari 100k agents (their own Nature CNN) latency rows."""
    out = tmp_path / "perf100k.json"
    proc = subprocess.run([sys.executable, "benchmark/perf.py", "--quick", "--agents", "der,drq", "--configs", "softmoe4",
                           "--train-modes", "", "--num-envs", "", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["latency"]
    assert [(r["agent"], r["config"]) for r in rows] == [("der", "softmoe4"), ("drq", "softmoe4")]
    assert all(r["update_ms_median"] > 0 and r["params"] > 0 for r in rows)


@pytest.mark.parametrize("timers, envs", [(False, "vector"), (False, "one"), (True, "vector"), (True, "child")])
def test_profile_loop_quick(tmp_path, timers, envs):
    """profile_loop.py measures the loop from its first iteration to its last (cProfile, or clocks
    with --timers; the closing checkpoint apart) and splits each agent step's host time into its parts; the parts are measured and
    leave time for the rest of the loop, with ale-py's vector env (K = 2) or one environment.
    --emulator-steps times the environments alone, and --emulator-process runs one environment
    in a child process."""
    out = tmp_path / "loop.json"
    flags = ["--timers", "--emulator-steps", "30"] if timers else []
    emulator_process = envs == "child"
    env_flags = {"vector": ["--num-envs", "2"], "one": ["--num-envs", "1"],
                 "child": ["--num-envs", "1", "--emulator-process"]}[envs]
    proc = subprocess.run([sys.executable, "benchmark/profile_loop.py", "--agent", "dqn", *env_flags, "--quick",
                           *flags, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["profiled_steps"] == 100 and result["profiled_seconds"] > 0
    assert result["after_training_s"] > 0, "the closing checkpoint is timed apart, outside the window"
    parts = result["us_per_agent_step"]
    assert set(parts) == {"emulator", "act", "update", "replay", "other"} | ({"act_wait"} if timers else set())
    assert all(us > 0 for us in parts.values()), parts
    assert sum(parts.values()) == pytest.approx(1e6 * result["profiled_seconds"] / 100)
    if not timers:  # where "other" goes: the functions by own time, the most first
        own = [f["own_us_per_agent_step"] for f in result["top_functions"]]
        assert len(own) == 25 and own == sorted(own, reverse=True) and own[0] > 0
        assert any("dqn_moe_atari.py" in f["function"] for f in result["top_functions"])
    if timers:
        emulator = result["emulator_alone"]
        k = 1 if emulator_process else 2
        assert emulator["vector_steps"] == 30 and 0 < emulator["agent_steps"] <= 30 * k and emulator["agent_steps_per_s"] > 0



def test_conv_kernels_benchmark_covers_every_impala_convolution():
    """benchmark/conv_kernels.py times the shapes of exactly the 3x3 convolutions that an Impala
    encoder runs (read off the encoder itself), and on a machine without a GPU says so in one line."""
    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import conv_kernels
    import dqn_moe_atari as dqn

    encoder = dqn.nn.Sequential(*dqn.encoder_stages("impala", 4, (16, 32, 32)))
    seen = []
    for conv in encoder.modules():
        if isinstance(conv, dqn.SameConv2d):
            conv.register_forward_pre_hook(lambda m, inp: seen.append((m.in_channels, m.out_channels, inp[0].shape[-1])))
    with dqn.torch.no_grad():
        encoder(dqn.torch.zeros(1, 4, 84, 84))
    listed = [(cin, cout, side) for cin, cout, side, count in conv_kernels.layer_shapes((16, 32, 32)) for _ in range(count)]
    assert sorted(seen) == sorted(listed) and len(seen) == 15
    if not dqn.torch.cuda.is_available():
        proc = subprocess.run([sys.executable, "benchmark/conv_kernels.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_emulator_overlap_quick(tmp_path):
    """Every case is timed and written; the overlap figures are (a + b - both) / min(a, b)."""
    out = tmp_path / "overlap.json"
    proc = subprocess.run([sys.executable, "benchmark/emulator_overlap.py", "--steps", "30", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    times = [r[k] for k in ("gymnasium_alone_us", "vector_env_alone_us", "python_work_alone_us",
                            "gymnasium_thread_with_work_us", "vector_env_with_work_us", "emulator_process_alone_us",
                            "emulator_process_with_work_us")]
    assert all(t > 0 for t in times)
    for case in ("vector_env", "emulator_process"):
        a, b, both = r[f"{case}_alone_us"], r["python_work_alone_us"], r[f"{case}_with_work_us"]
        assert r[f"{case}_overlap"] == pytest.approx((a + b - both) / min(a, b))


def test_soft_moe_routing_probe_measures_pooling():
    """With Phi = 0 the routing is uniform and the Soft MoE is average pooling: every output token
    is the experts' mean output on the mean token, the entropies are 1 and the spread is 0. With a
    large Phi the probe sees the routing move away from that."""
    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import soft_moe_routing as probe
    torch = probe.torch
    torch.manual_seed(0)
    q_net = probe.drq.RainbowNetwork(probe.drq.Args(moe="soft", num_experts=4), 6)
    moe = q_net.torso.moe
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        moe.router.phi.zero_()
        tokens = probe.drq.tokenize(q_net.torso.encoder(probe.drq.preprocess(obs)), "conv")
        out, _ = moe(tokens)
        expert_out, _ = moe.experts(tokens.mean(dim=1)[:, None, None, :].expand(-1, 4, 1, -1))
        torch.testing.assert_close(out, expert_out.mean(dim=(1, 2))[:, None, :].expand_as(out))
    uniform = probe.routing_state(q_net, obs)
    assert uniform["dispatch_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert uniform["combine_entropy"] == pytest.approx(1.0, abs=1e-6)
    assert uniform["output_token_spread"] < 1e-5 and uniform["logit_std_over_tokens"] == 0
    with torch.no_grad():
        moe.router.phi.normal_(0, 30.0)
    routed = probe.routing_state(q_net, obs)
    assert routed["dispatch_entropy"] < 0.9 and routed["output_token_spread"] > 0.01


def test_soft_moe_routing_probe_quick(tmp_path):
    out = tmp_path / "routing.json"
    proc = subprocess.run([sys.executable, "benchmark/soft_moe_routing.py", "--frames", "64", "--updates", "4",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [x["adam_eps"] for x in r["results"]] == [1.5e-4, 1e-8]
    for x in r["results"]:
        assert [s["update"] for s in x["states"]] == [0, 1, 2, 3, 4]
        assert all(0 < s["dispatch_entropy"] <= 1 + 1e-6 for s in x["states"]) and x["grad_rms"]["phi"] > 0
        assert x["grad_rms"]["encoder"] > 0
    assert set(r["encoder_grad_rms_at_init"]) == {"none", "soft"} and min(r["encoder_grad_rms_at_init"].values()) > 0


@pytest.mark.parametrize("agent", ["drq", "der", "dqn", "rainbow"])
def test_official_equivalence_maps_every_parameter(agent):
    """official_equivalence.py copies Dopamine's weights into ours by a name map; it must name
    every parameter of our networks once, convolutions as 4-d and dense kernels as 2-d arrays,
    for each MoE and encoder (the probe itself needs JAX, which CI does not install)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import official_equivalence as eq
    torch = eq.torch
    for moe in ("soft", "top1", "none"):
        for encoder in ("nature", "impala"):
            args = eq.our_args(agent, moe, encoder, None)
            params = dict(eq.our_network(agent, args, 6, torch.float32).named_parameters())
            names = eq.official_to_ours_names(agent, encoder, moe)
            assert set(names) == set(params), (moe, encoder)
            assert len({official for official, _ in names.values()}) == len(names)
            for name, (_, layout) in names.items():
                assert params[name].dim() == {"conv": 4, "dense": 2}.get(layout, params[name].dim()), name


def test_flicker_check_finds_objects_drawn_on_one_phase(tmp_path):
    """benchmark/flicker_check.py: a moving sprite drawn on even frames only gives its band a
    period-2 (and period-4) flicker index of 2 and a period-3 one near 0; one drawn on every frame
    gives 0; a real game's report is written."""
    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import flicker_check
    import numpy as np
    frames = np.zeros((240, 40, 40), np.uint8)
    for t in range(240):
        x = 4 + (t // 2 % 30)  # both sprites move: no pixel is covered most of the time
        if t % 2 == 0:
            frames[t, 2:6, x:x + 4] = 200  # top band: flickers
        frames[t, 30:34, x:x + 4] = 200  # bottom band: always drawn
    top, bottom = flicker_check.band_report(flicker_check.foreground(frames, 10.0), [2, 3, 4], bands=2)
    assert top["flicker_index"]["2"] == pytest.approx(2.0) and top["flicker_index"]["4"] == pytest.approx(2.0)
    assert top["flicker_index"]["3"] == pytest.approx(0.0, abs=1e-9)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in bottom["flicker_index"].values())
    assert flicker_check.main(["--game", "Pong", "--frames", "200", "--out", str(tmp_path / "f.json")]) == 0
    report = json.load(open(tmp_path / "f.json"))
    assert report["frames"] == 200 and len(report["bands"]) == 8


def test_noop_sensitivity_plays_each_start_delay(tmp_path):
    """benchmark/noop_sensitivity.py: a delay of 0 frames starts from the reset's own observation;
    a greedy policy on the deterministic emulator plays the same episode from the same delay
    whatever the emulator's seed; the runners' scores are the means over their 30 delays."""
    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    import noop_sensitivity
    import numpy as np
    import drq_moe_atari100k as drq
    env = drq.make_env(drq.resolve_env_id("Pong"), 0, False, 2000)
    first, _ = env.reset(seed=3)
    assert np.array_equal(noop_sensitivity.delayed_start(env, 3, 0), first)
    later = noop_sensitivity.delayed_start(env, 3, 200)
    assert later.shape == (84, 84) and not np.array_equal(later, first)  # Pong's ball is served by then
    env.close()

    args = drq.Args(env_id="Pong", moe="none", max_episode_frames=400)  # 100 agent steps at most
    torch.manual_seed(0)
    q_net = drq.RainbowNetwork(args, 6)
    drq.save_checkpoint(str(tmp_path / "model.pt"), {"args": dataclasses.asdict(args), "env_id": "ALE/Pong-v5",
                                                     "step": 0, "q_net": q_net.state_dict()})
    out = tmp_path / "n.json"
    argv = ["--model", str(tmp_path / "model.pt"), "--delays", "0", "5", "--episodes", "2", "--epsilon", "0",
            "--early-steps", "1000"]  # longer than any episode here: the early return is the whole return
    assert noop_sensitivity.main([*argv, "--out", str(out), "--plot", str(tmp_path / "n.png")]) == 0
    report = json.load(open(out))
    assert os.path.getsize(tmp_path / "n.png") > 0
    by_delay = report["returns_by_delay"]
    assert set(by_delay) == {"0", "5"} and all(len(r) == 2 and r[0] == r[1] for r in by_delay.values())
    assert report["lengths"][0] == report["lengths"][1] > 0
    assert report["early_returns_by_delay"] == by_delay
    env = drq.make_env("ALE/Pong-v5", 0, False, 400)
    _, _, early = noop_sensitivity.play(q_net.eval(), [env], [0], [0], 0.0, True, np.random.default_rng(0), 0)
    assert early == [0.0]
    env.close()

    random_play = tmp_path / "random.json"
    delays = [*map(str, range(30)), *map(str, range(32, 120, 4))]  # both runners' delays
    assert noop_sensitivity.main(["--random", "Pong", "--max-steps", "10", "--delays", *delays, "--episodes", "1",
                                  "--out", str(random_play)]) == 0
    report = json.load(open(random_play))
    assert report["epsilon"] == 1.0 and report["lengths"] == [10] * len(delays)
    assert {"frames_0_29", "frames_0_29_se", "steps_0_29", "steps_0_29_se"} <= set(report["summary"])
    table = noop_sensitivity.summary_table([report, json.load(open(out))])  # the second lacks delays 6-29
    assert table.count("ALE/Pong-v5") == 1 and "random actions" in table
    assert noop_sensitivity.main(["--summarize", str(random_play), str(out), "--plot", str(tmp_path / "s.png"),
                                  "--labels", "random", "network"]) == 0
    assert os.path.getsize(tmp_path / "s.png") > 0
    with pytest.raises(SystemExit, match="one name per file"):
        noop_sensitivity.main(["--summarize", str(out), "--plot", str(tmp_path / "t.png"), "--labels", "a", "b"])
    assert not os.path.exists(tmp_path / "t.png")

    means = noop_sensitivity.protocol_means({d: [float(d)] for d in range(120)})
    assert means["frames_0_29"] == pytest.approx(14.5) and means["steps_0_29"] == pytest.approx(58.0)
    assert means["phase_1"] == pytest.approx(np.mean(range(1, 120, 4)))


def test_eval_threads_quick(tmp_path):
    """Every thread count is timed and written, its steps per second positive; a bad count fails in one line."""
    out = tmp_path / "eval_threads.json"
    proc = subprocess.run([sys.executable, "benchmark/eval_threads.py", "--threads", "1,2", "--envs", "4", "--steps", "10",
                           "--pause-ms", "1", "--game", "Pong", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [row["threads"] for row in r["rows"]] == [1, 2] and r["envs"] == 4
    assert all(row["env_steps_per_s"] > 0 and row["cpu_per_wall_with_pauses"] > 0 for row in r["rows"])
    bad = subprocess.run([sys.executable, "benchmark/eval_threads.py", "--threads", "0", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_cut_random_play_pairs_the_same_episodes_under_each_frame_skip(tmp_path):
    """benchmark/cut_random_play.py: Boxing loses no life, so its random episodes are the same under
    the three frame skips; Breakout's lost lives cut steps short, so the same action streams play
    other episodes; a frame skip list that does not start with full fails in one line."""
    out = tmp_path / "random.json"
    proc = subprocess.run([sys.executable, "benchmark/cut_random_play.py", "--games", "Boxing,Breakout", "--episodes", "2",
                           "--max-frames", "2000", "--processes", "2", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = {(r["game"], r["life_loss_frame_skip"]): r for r in result["runs"]}
    assert runs[("Boxing", "full")]["returns"] == runs[("Boxing", "cut")]["returns"] == runs[("Boxing", "cut_2021")]["returns"]
    assert runs[("Breakout", "full")]["lengths"] != runs[("Breakout", "cut")]["lengths"]
    rows = {(r["game"], r["life_loss_frame_skip"]): r for r in result["rows"]}
    assert rows[("Boxing", "cut")]["episodes_that_differ"] == 0 and rows[("Boxing", "cut")]["p_against_full"] == 1.0
    assert "p_against_full" not in rows[("Breakout", "full")]
    bad = subprocess.run([sys.executable, "benchmark/cut_random_play.py", "--modes", "cut,full"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_life_loss_phase_counts_the_cut_frame_skips(tmp_path):
    """Under Dopamine's rule a life-losing step plays 1-4 frames: Breakout's random play loses lives
    and shifts later steps' phase, Pong has no lives to lose and keeps the start's phase."""
    out = tmp_path / "phase.json"
    proc = subprocess.run([sys.executable, "benchmark/life_loss_phase.py", "--games", "Breakout,Pong", "--episodes", "1",
                           "--max-frames", "3000", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    breakout, pong = json.loads(out.read_text())["rows"]
    by_k = breakout["life_loss_steps_by_frames_played"]
    assert breakout["lives_lost_per_episode"] >= 1 and sum(by_k.values()) == breakout["lives_lost_per_episode"]
    assert breakout["share_of_steps_at_another_phase"] > 0 or all(by_k[k] == 0 for k in "123")
    assert pong["lives_lost_per_episode"] == 0 and pong["share_of_steps_at_another_phase"] == 0


def fake_launcher_run(folder, name, training_line, final, choices=None):
    """A launcher run folder: the agent's printed training line in log.txt and, if `final` is
    given, a finished run folder (config.json, summary.jsonl) with that evaluation return and the
    evaluation record's fields `choices`."""
    run = os.path.join(folder, f"{name}__s1__abcd1234")
    os.makedirs(os.path.join(run, "agent_run"))
    with open(os.path.join(run, "log.txt"), "w") as f:
        f.write(f"# attempt 1\nstep    {training_line} | 120.0 steps/s | return(last 20)   40.00 | loss 0.1\n")
        f.write(f"step    100,000/100,000 |   126.6 steps/s | return(last 20)   {final[0]:.2f} | loss 0.2\n" if final else "")
    if final:
        with open(os.path.join(run, "agent_run", "config.json"), "w") as f:
            json.dump({"exp_name": name.split("__")[0], "env_id": f"ALE/{name.split('__')[1]}-v5", "seed": 1}, f)
        with open(os.path.join(run, "agent_run", "summary.jsonl"), "w") as f:
            f.write(json.dumps({"eval": True, "step": 100000, "eval_return": final[1], **(choices or {})}) + "\n")
            f.write(json.dumps({"final": True, "game": name.split("__")[1], "seed": 1, "eval_return": final[1]}) + "\n")


def test_eval_collapse_finds_the_runs_that_play_in_training_only(tmp_path):
    """A run collapses when its training return (the last training line of log.txt) is positive
    and its final evaluation is below --below times it; unfinished runs are left out; where the
    evaluation recorded the network's choices, the most chosen action's share and the median
    Q-value lead come with the run."""
    fake_launcher_run(tmp_path, "soft__Hero", "98,000/100,000", (3253.5, 0.0),
                      {"eval_greedy_counts": [0, 30, 10, 0], "eval_q_margin_median": 0.0125})
    fake_launcher_run(tmp_path, "soft__Kangaroo", "98,000/100,000", (400.0, 150.0))
    fake_launcher_run(tmp_path, "none__Pong", "98,000/100,000", (-20.0, -21.0))
    fake_launcher_run(tmp_path, "none__Alien", "50,000/100,000", None)
    out = tmp_path / "collapse.json"
    script = os.path.join(ROOT, "benchmark", "eval_collapse.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path), "--below", "0.25", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.load(open(out))
    assert result["counts"] == {"soft": {"collapsed": 1, "runs": 2}, "none": {"collapsed": 0, "runs": 1}}
    assert [(r["game"], r["training"], r["collapsed"]) for r in result["runs"]] == \
        [("Pong", -20.0, False), ("Hero", 3253.5, True), ("Kangaroo", 400.0, False)]
    assert [(r["top_action_share"], r["q_margin_median"]) for r in result["runs"]] == [(None, None), (0.75, 0.0125),
                                                                                     (None, None)]
    assert "| soft | Hero | 1 | 3253.5 | 0.0 | 75% | 0.0125 |" in proc.stdout
    proc = subprocess.run([sys.executable, script, str(tmp_path), "--below", "0.5"], capture_output=True, text=True, timeout=60)
    assert "| soft | Kangaroo | 1 | 400.0 | 150.0 | - | - |" in proc.stdout
    proc = subprocess.run([sys.executable, script, str(tmp_path / "none__Alien__s1__abcd1234")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "no finished run" in proc.stderr
