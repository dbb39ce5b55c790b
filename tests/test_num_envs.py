"""--num-envs K: K environments stepped together (AtariEnvs), a replay of K interleaved streams
(FrameReplay's num_streams), and the DQN and Rainbow agents running them."""

import hashlib

import gymnasium as gym
import numpy as np
import pytest
import torch

import dqn_moe_atari as dqn
from agent_runs import assert_one_line_error, checkpoint, kill_after_first_checkpoint, only_run_dir, records
from agent_runs import run as run_script

GAMMA = 0.9


# ---- the environments ----------------------------------------------------------------------
@pytest.mark.parametrize("omp, k, expected", [(None, 3, 3), ("2", 3, 2), ("8", 3, 3), ("4,2", 16, 4), ("", 2, 2), ("x", 2, 2)])
def test_emulator_threads_honour_omp_num_threads(monkeypatch, omp, k, expected):
    """One emulator thread per environment, at most the cores, or OMP_NUM_THREADS where a launcher
    that runs several seeds on one machine sets it; a value that is not a count is ignored."""
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(dqn.os, "cpu_count", lambda: 16)
    assert dqn.emulator_threads(k) == expected


def test_a_gpu_run_keeps_one_torch_host_thread():
    """On the GPU the loop's torch work on the host is small copies: configure_backends leaves
    torch one host thread, so that its idle pool does not spin on the emulators' cores. A CPU
    run keeps its threads for the network's maths."""
    before = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.set_num_threads(2)
        dqn.configure_backends("cpu", True)
        assert torch.get_num_threads() == 2
        dqn.configure_backends("cuda", True)  # sets flags only: no GPU needed
        assert torch.get_num_threads() == 1
    finally:
        dqn.configure_backends("cpu", True)
        torch.set_num_threads(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]


def test_no_tf32_computes_float32_fully_and_keeps_the_triton_kernels_off(monkeypatch):
    """--no-tf32 (every agent, resumable) turns TF32 off for matmuls and cuDNN's convolutions on the
    GPU, and keeps the Triton convolutions off, as their products are TF32; the default keeps both."""
    import tyro
    import der_moe_atari100k
    import drq_moe_atari100k
    import rainbow_moe_atari
    for agent in (dqn, rainbow_moe_atari, der_moe_atari100k, drq_moe_atari100k):
        assert agent.Args().tf32 and not tyro.cli(agent.Args, args=["--no-tf32"]).tf32
        assert "tf32" in agent.RESUMABLE_FLAGS
    before = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    saved = dict(dqn.CONV_KERNELS)
    monkeypatch.setattr(dqn, "triton_convs_available", lambda device: True)  # as on an H100, without one
    try:
        dqn.configure_backends("cuda", False, triton_convs=True)  # flags only: no GPU needed
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 and dqn.CONV_KERNELS["on"]
        dqn.configure_backends("cuda", False, triton_convs=True, tf32=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not dqn.CONV_KERNELS["on"]
    finally:
        dqn.CONV_KERNELS.update(saved)
        torch.set_num_threads(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]


def roll(envs, actions):
    """Step every environment with its column of `actions`; return all that came back."""
    out = [(envs.reset(seed=3).copy(), np.zeros(envs.num_envs), np.zeros(envs.num_envs, bool), np.zeros(envs.num_envs, bool))]
    for a in actions:
        envs.send(a[: envs.num_envs])
        out.append(tuple(x.copy() for x in envs.recv()))
    return out


def test_vector_env_gives_the_single_envs_frames_and_restarts():
    """Without sticky actions the game is deterministic: ale-py's vector env (K = 3) gives every
    environment the frames, rewards and episode ends of the gymnasium env `make_env` builds (K =
    1), pixel for pixel, and both restart an environment one call after its episode ended, with
    no reward for that call. Episodes are cut at 160 frames (40 agent steps) to see restarts."""
    actions = np.random.default_rng(0).integers(4, size=(95, 3))
    actions[:, 1] = actions[:, 0]  # environment 1 plays like environment 0
    one = dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, False, 160)
    three = dqn.AtariEnvs("ALE/Breakout-v5", 3, 0, False, 160)
    single, vector = roll(one, actions), roll(three, actions)
    for t, ((f1, r1, te1, tr1), (f3, r3, te3, tr3)) in enumerate(zip(single, vector)):
        assert np.array_equal(f1[0], f3[0]) and np.array_equal(f3[0], f3[1]), t
        assert (r1[0], te1[0], tr1[0]) == (r3[0], te3[0], tr3[0]), t
    ends = [t for t, (_, _, te, tr) in enumerate(single) if te[0] or tr[0]]
    assert ends[:2] == [40, 81]  # 40 steps, then a restart call, then 40 steps
    first_frame = single[0][0][0]
    assert np.array_equal(single[41][0][0], first_frame) and single[41][1][0] == 0
    assert any(not np.array_equal(f[0], f[2]) for f, *_ in vector)  # environment 2 played other actions
    one.close()
    three.close()


def test_single_env_state_restores_the_emulator():
    envs = dqn.AtariEnvs("ALE/Pong-v5", 1, 0, True, 108_000)
    envs.reset(seed=1)
    for a in range(20):
        envs.send(np.array([a % 6]))
        envs.recv()
    state = envs.state()
    later = []
    for restore in (False, True):
        if restore:
            envs.set_state(state)
        envs.send(np.array([2]))
        later.append(envs.recv()[0].copy())
        envs.send(np.array([3]))
        later.append(envs.recv()[0].copy())
    assert np.array_equal(later[0], later[2]) and np.array_equal(later[1], later[3])
    assert dqn.AtariEnvs("ALE/Pong-v5", 2, 0, True, 108_000).state() is None


def dopamine_reference_steps(env_id, actions, life_loss, max_frames):
    """Dopamine's `AtariPreprocessing.step` (atari_lib.py) written out over single emulator frames:
    with terminal_on_life_loss a step stops at the frame that loses a life or ends the game, after
    reading its screen since April 2022 (`cut`) or before (`cut_2021`). Returns per step the
    84x84 observation, the reward, game over, and the frames played."""
    import cv2
    env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                   max_num_frames_per_episode=max_frames, obs_type="grayscale")
    env.reset(seed=0)
    ale = env.unwrapped.ale
    screens = [np.zeros((210, 160), dtype=np.uint8) for _ in range(2)]
    ale.getScreenGrayscale(screens[0])
    lives, out = ale.lives(), []
    for a in actions:
        reward, start = 0.0, ale.getEpisodeFrameNumber()
        for t in range(4):
            _, r, over, truncated, _ = env.step(int(a))
            reward += r
            is_terminal = over or truncated or ale.lives() < lives
            lives = ale.lives()
            if is_terminal and life_loss == "cut_2021":
                break
            if t >= 2:
                ale.getScreenGrayscale(screens[t - 2])
            if is_terminal:
                break
        np.maximum(screens[0], screens[1], out=screens[0])
        out.append((cv2.resize(screens[0], (84, 84), interpolation=cv2.INTER_AREA), reward, over,
                    ale.getEpisodeFrameNumber() - start))
        if over or truncated:
            break
    env.close()
    return out


def frame_skip_steps(env, actions):
    env.reset(seed=0)
    ale, out = env.unwrapped.ale, []
    for a in actions:
        start = ale.getEpisodeFrameNumber()
        obs, reward, terminated, truncated, _ = env.step(int(a))
        out.append((obs, reward, terminated, ale.getEpisodeFrameNumber() - start))
        if terminated or truncated:
            break
    return out


@pytest.mark.parametrize("life_loss", ["cut", "cut_2021"])
def test_life_loss_cuts_the_frame_skip_as_dopamine_does(life_loss):
    """--life-loss-frame-skip cut / cut_2021: `make_env` plays Dopamine's frame skip step for step
    (observation, reward, game over, frames played) over a Breakout game of random actions, whose
    lost lives end steps after 1 to 3 frames, so that later steps start at other frame phases."""
    actions = np.random.default_rng(0).integers(4, size=3000)
    env = dqn.make_env("ALE/Breakout-v5", 0, False, 20_000, None, life_loss)
    ours, reference = frame_skip_steps(env, actions), dopamine_reference_steps("ALE/Breakout-v5", actions, life_loss, 20_000)
    assert len(ours) == len(reference) and ours[-1][2]  # the whole game, to its end
    for t, ((o1, r1, over1, n1), (o2, r2, over2, n2)) in enumerate(zip(ours, reference)):
        assert np.array_equal(o1, o2) and (r1, over1, n1) == (r2, over2, n2), t
    assert sum(n < 4 for *_, n in ours[:-1]) >= 2


def test_full_frame_skip_is_gymnasiums():
    """--life-loss-frame-skip full (the default): `make_env`'s steps are those of gymnasium's
    AtariPreprocessing, four frames each, through the lost lives and the game's end."""
    actions = np.random.default_rng(0).integers(4, size=3000)
    ours = frame_skip_steps(dqn.make_env("ALE/Breakout-v5", 0, False, 20_000), actions)
    plain = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                     max_num_frames_per_episode=20_000, obs_type="grayscale", max_episode_steps=20_000)
    theirs = frame_skip_steps(gym.wrappers.AtariPreprocessing(plain, noop_max=0, frame_skip=4), actions)
    assert len(ours) == len(theirs) and ours[-1][2]
    for t, ((o1, r1, over1, n1), (o2, r2, over2, n2)) in enumerate(zip(ours, theirs)):
        assert np.array_equal(o1, o2) and (r1, over1, n1) == (r2, over2, n2), t
    assert all(n == 4 for *_, n in ours[:-1])


def test_a_restored_state_holds_the_screens_a_cut_step_reads():
    """A checkpoint's environment state carries `DopamineFrameSkip`'s lives and screens: a fresh
    environment given the state of one that just cut a step plays on with the same frames."""
    actions = np.random.default_rng(1).integers(4, size=3000)
    env = dqn.make_env("ALE/Breakout-v5", 0, False, 20_000, None, "cut_2021")
    env.reset(seed=0)
    ale = env.unwrapped.ale
    for a in actions:
        start = ale.getEpisodeFrameNumber()
        env.step(int(a))
        if ale.getEpisodeFrameNumber() - start < 4:
            break
    state = dqn.get_env_state(env)
    fresh = dqn.make_env("ALE/Breakout-v5", 0, False, 20_000, None, "cut_2021")
    fresh.reset(seed=5)
    dqn.set_env_state(fresh, state)
    assert fresh.lives == env.lives and all(np.array_equal(a, b) for a, b in zip(fresh.obs_buffer, env.obs_buffer))
    for a in actions[:200]:
        assert np.array_equal(env.step(int(a))[0], fresh.step(int(a))[0])


def test_a_restored_state_plays_on_with_the_sticky_action_of_the_last_frame():
    """Sticky actions replay the last frame's action with probability 0.25, and a restored game
    replays the saved game's: twenty Pong games moved UP, saved, and restored into fresh
    environments play on DOWN with the frames of the games they came from. (ALE's own saved
    state leaves out the last action: a restored game played NOOP there, and some diverged.)"""
    up, down = 2, 3
    for seed in range(20):
        env = dqn.make_env("ALE/Pong-v5", seed, True, 108_000)
        env.reset(seed=seed)
        for a in [up, down] * 10 + [up] * 3:
            env.step(a)
        state = dqn.get_env_state(env)
        fresh = dqn.make_env("ALE/Pong-v5", seed + 1, True, 108_000)
        fresh.reset(seed=seed + 1)
        dqn.set_env_state(fresh, state)
        for _ in range(10):
            assert np.array_equal(env.step(down)[0], fresh.step(down)[0]), f"seed {seed}"


def test_a_reset_leaves_noop_as_the_last_action_even_outside_the_action_set():
    """After a reset the last action is ALE's NOOP, which a sticky frame replays, as ALE's own
    sticky actions do; VideoCheckers' minimal action set has no NOOP (its index 0 is another
    action). With the probability at 1 every frame replays it: the screens of NOOP frames. The
    no-op start's frames (`noop_frames`) are NOOPs too."""
    env = dqn.make_env("ALE/VideoCheckers-v5", 0, False, 108_000)
    assert env.action_set[0] != dqn.ale_py.Action.NOOP
    env = dqn.DopamineFrameSkip(env.env, "full", sticky_probability=1.0, seed=0)
    env.reset(seed=0)
    noops = dqn.make_env("ALE/VideoCheckers-v5", 0, False, 108_000)
    noops.reset(seed=0)
    for _ in range(50):
        env.step(1)
        for _ in range(4):
            noops.unwrapped.ale.act(dqn.ale_py.Action.NOOP)
        assert np.array_equal(env.unwrapped.ale.getScreen(), noops.unwrapped.ale.getScreen())
    env.sticky_probability = 0.0
    env.step(1)  # the last action is now another than NOOP; the no-op start's frames are NOOPs all the same
    dqn.emulator_call(env, "noop_frames", 9)
    for _ in range(4):
        noops.unwrapped.ale.act(env.action_set[1])
    for _ in range(9):
        noops.unwrapped.ale.act(dqn.ale_py.Action.NOOP)
    assert np.array_equal(env.unwrapped.ale.getScreen(), noops.unwrapped.ale.getScreen())


@pytest.mark.parametrize("game, life_loss, max_frames", [("Breakout", "cut", 20_000), ("Pong", "full", 1_000)])
def test_frames_played_straight_on_the_emulator_are_gymnasiums(game, life_loss, max_frames):
    """`DopamineFrameSkip` plays its frames on ALE directly, less the screen that gymnasium's step
    reads: the same frames, rewards, lives and episode ends (game over, a lost life's cut, the
    frame limit) as through gymnasium's step, which it takes while a video is recorded."""
    def roll(recording):
        env = dqn.make_env(f"ALE/{game}-v5", 0, True, max_frames)
        env = dqn.DopamineFrameSkip(env.env, life_loss, 0.25, 0, recording=recording)
        out = [env.reset(seed=0)[0]]
        for a in np.random.default_rng(0).integers(env.action_space.n, size=700):
            obs, reward, terminated, truncated, info = env.step(int(a))
            out.append((obs, reward, terminated, truncated, info["lives"]))
            if terminated or truncated:
                out.append(env.reset()[0])
        return out

    direct, through_gymnasium = roll(False), roll(True)
    assert any(isinstance(x, np.ndarray) for x in direct[1:]), "no episode ended: nothing tested at its end"
    for a, b in zip(direct, through_gymnasium, strict=True):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b)
        else:
            assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]


def test_emulator_process_gives_the_local_emulators_frames_and_states():
    """--emulator-process: the one environment stepped in a child process gives the frames,
    rewards, episode ends and lives of the same environment stepped in the loop's process, with
    sticky actions drawn from the same seed, restarts and NOOP frames included; its state
    restores into a local emulator and back, so a checkpoint moves between the two."""
    actions = np.random.default_rng(1).integers(4, size=(90, 1))
    local = dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, True, 160)
    child = dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, True, 160, emulator_process=True)
    assert isinstance(child.env, dqn.EmulatorProcess) and child.num_actions == local.num_actions == 4
    for a, b in zip(roll(local, actions), roll(child, actions)):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert np.array_equal(local.lives, child.lives) and np.array_equal(local.ended, child.ended)
    assert local.noop_frames(7) is None and child.noop_frames(7) is None
    for source, target in ((child, local), (local, child)):  # child -> local, then local -> child
        target.set_state(source.state())
        for a in actions[:30]:
            source.send(a)
            target.send(a)
            assert all(np.array_equal(x, y) for x, y in zip(source.recv(), target.recv()))
    child.close()
    local.close()
    assert not child.env.process.is_alive()


def test_the_one_environment_cuts_in_the_loops_process_and_in_a_child():
    """The training loop's environment (K = 1) takes --life-loss-frame-skip: the frames of a cut
    Breakout game, the same in the loop's process and in a child (--emulator-process), leave the
    full frame skip's once a life is lost; K > 1 cannot cut and fails in one line."""
    actions = np.random.default_rng(0).integers(4, size=(400, 1))
    full = roll(dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, False, 20_000), actions)
    local = roll(dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, False, 20_000, life_loss="cut"), actions)
    child_envs = dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, False, 20_000, emulator_process=True, life_loss="cut")
    child = roll(child_envs, actions)
    child_envs.close()
    assert all(all(np.array_equal(x, y) for x, y in zip(a, b)) for a, b in zip(local, child))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(local, full))
    with pytest.raises(SystemExit, match="needs one environment"):
        dqn.AtariEnvs("ALE/Breakout-v5", 2, 0, False, 20_000, life_loss="cut")


def test_rom_file_loads_that_rom_in_every_environment(monkeypatch, tmp_path):
    """--rom-file: Breakout pointed at a copy of Pong's ROM plays Pong (ALE knows a game by its
    ROM's bytes) in the loop's process, in the child process and in the vector env, frame for
    frame with Pong itself; the other games keep ale-py's ROMs. The file is copied when it is
    given, so the run goes on when it is deleted; config.json names the file given."""
    roms = dqn.ale_py.roms
    monkeypatch.setattr(roms, "get_rom_path", roms.get_rom_path)  # the override is undone after the test
    rom = tmp_path / "not_breakout.bin"
    rom.write_bytes(open(roms.get_rom_path("pong"), "rb").read())
    actions = np.random.default_rng(2).integers(6, size=(40, 2))
    pong = roll(dqn.AtariEnvs("ALE/Pong-v5", 1, 0, False, 400), actions)
    dqn.use_rom_file("breakout", str(rom))
    (loaded,) = dqn.rom_files().values()
    assert list(dqn.rom_files()) == ["breakout"] and loaded != str(rom) and open(loaded, "rb").read() == rom.read_bytes()
    pong_md5 = hashlib.md5(rom.read_bytes()).hexdigest()
    rom.unlink()
    local = dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, False, 400)
    child = dqn.AtariEnvs("ALE/Breakout-v5", 1, 0, False, 400, emulator_process=True)
    vector = dqn.AtariEnvs("ALE/Breakout-v5", 2, 0, False, 400)
    assert local.num_actions == child.num_actions == vector.num_actions == 6  # Pong's, not Breakout's 4
    for envs in (local, child):
        for a, b in zip(pong, roll(envs, actions)):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(roll(vector, actions)[-1][0][0], pong[-1][0][0])
    assert dqn.AtariEnvs("ALE/Asterix-v5", 1, 0, False, 400).num_actions == 9
    child.close()
    # what a run's config.json records of its ROM
    assert dqn.rom_provenance("ALE/Breakout-v5") == {"ale_py": dqn.ale_py.__version__, "rom": str(rom), "rom_md5": pong_md5}
    assert dqn.rom_provenance("ALE/Asterix-v5")["rom_md5"] != pong_md5


# ---- the replay ------------------------------------------------------------------------------
def random_streams(k, vector_steps, seed):
    """K streams of rows as the agents write them: step rows, and a final row on the call after
    an episode ends. Frames are 2x2 and carry a stream-local id, so stacks can be compared."""
    rng = np.random.default_rng(seed)
    rows = []  # per vector step: (frames, actions, rewards, terminated, final)
    ended = np.zeros(k, bool)
    count = np.zeros(k, np.int64)
    for _ in range(vector_steps):
        final = ended.copy()
        frames = np.stack([np.full((2, 2), (count[e] % 250) + 1, np.uint8) for e in range(k)])
        actions, rewards = rng.integers(5, size=k), rng.integers(-3, 4, size=k).astype(float)
        terminated = ~final & (rng.random(k) < 0.08)
        truncated = ~final & ~terminated & (rng.random(k) < 0.04)
        rows.append((frames, actions, rewards, terminated, final))
        ended = terminated | truncated
        count += 1
    return rows


@pytest.mark.parametrize("k, capacity, n", [(3, 60, 3), (4, 400, 5), (2, 1000, 1)])
def test_k_streams_hold_the_transitions_of_k_single_replays(k, capacity, n):
    """Every transition of a K-stream replay (row t*K + e) equals the one that stream's own
    single-stream replay gives at row t: stacks, action, n-step return, discount and next
    stack, across episode ends and the circular buffer's wrap-around; and the rows that can be
    sampled are the same."""
    steps = 90
    multi = dqn.FrameReplay(capacity, (2, 2), 4, n, GAMMA, stage_rows=7, num_streams=k)
    singles = [dqn.FrameReplay(capacity // k, (2, 2), 4, n, GAMMA, stage_rows=5) for _ in range(k)]
    for frames, actions, rewards, terminated, final in random_streams(k, steps, seed=k):
        multi.add_rows(frames, actions, rewards, terminated, final)
        for e, single in enumerate(singles):
            if final[e]:
                single.add_final(frames[e])
            else:
                single.add(frames[e], int(actions[e]), float(rewards[e]), bool(terminated[e]))
    multi.flush()
    for single in singles:
        single.flush()
    lo, hi = multi._row_bounds()
    assert multi.can_sample() and hi - lo + 1 <= capacity
    for e, single in enumerate(singles):
        slo, shi = single._row_bounds()
        rows_multi = [r for r in range(lo, hi + 1) if r % k == e]
        assert [r // k for r in rows_multi] == list(range(slo, shi + 1))
        keep = [i for i, r in enumerate(rows_multi) if not single.final[(r // k) % single.capacity]]
        a = multi.gather(torch.tensor(rows_multi)[keep])
        b = single.gather(torch.tensor([r // k for r in rows_multi])[keep])
        for key in ("obs", "action", "return", "discount", "next_obs"):
            assert torch.equal(a[key], b[key]), (e, key)


@pytest.mark.parametrize("k, capacity, n", [(1, 50, 1), (1, 64, 3), (3, 60, 3)])
def test_updates_between_start_and_finish_rows_see_the_stored_step(k, capacity, n):
    """The agents begin a vector step's rows with their frames (`start_rows`), queue the updates
    behind the action's forward pass, which run while the emulators step, and then write the
    actions, rewards and terminations (`finish_rows`). Every transition an update could
    sample in between equals the one it would sample had the whole step been stored first
    (Dopamine's order), and afterwards both replays hold the same rows, whether the step's rows
    were still staged or already on the device; across episode ends and wrap-around."""
    stored = dqn.FrameReplay(capacity, (2, 2), 4, n, GAMMA, stage_rows=5, num_streams=k)
    split = dqn.FrameReplay(capacity, (2, 2), 4, n, GAMMA, stage_rows=5, num_streams=k)
    compared = 0
    for t, (frames, actions, rewards, terminated, final) in enumerate(random_streams(k, 80, seed=10 + k)):
        stored.add_rows(frames, actions, rewards, terminated, final)
        split.start_rows(frames, final)
        if t % 3 == 0:  # an update runs while the emulators step
            stored.flush()
            split.flush()
            assert stored._row_bounds() == split._row_bounds()
            if split.can_sample():
                lo, hi = split._row_bounds()
                rows = torch.tensor([r for r in range(lo, hi + 1) if not split.final[r % split.capacity]])
                a, b = stored.gather(rows), split.gather(rows)
                for key in ("obs", "action", "return", "discount", "next_obs"):
                    assert torch.equal(a[key], b[key]), (t, key)
                compared += 1
        split.finish_rows(actions, rewards, terminated)
    stored.flush()
    split.flush()
    for field in stored.fields:
        assert torch.equal(getattr(stored, field), getattr(split, field)), field
    assert compared >= 20


def test_k_stream_sampling_never_returns_final_rows_and_round_trips():
    k = 4
    replay = dqn.FrameReplay(200, (2, 2), 4, 3, GAMMA, num_streams=k)
    for row in random_streams(k, 120, seed=1):
        replay.add_rows(*row)
    replay.flush()
    torch.manual_seed(0)
    rows = replay.sample_rows(4000)
    lo, hi = replay._row_bounds()
    assert not replay.final[rows % replay.capacity].any() and rows.min() >= lo and rows.max() <= hi
    assert len(set((rows % k).tolist())) == k  # every stream is drawn
    copy = dqn.FrameReplay(200, (2, 2), 4, 3, GAMMA, num_streams=k)
    copy.load_state_dict(replay.state_dict())
    assert np.array_equal(copy.episode_step, replay.episode_step) and copy.added == replay.added
    with pytest.raises(SystemExit, match="--num-envs"):
        dqn.FrameReplay(200, (2, 2), 4, 3, GAMMA, num_streams=2).load_state_dict(replay.state_dict())


def test_k_stream_prioritized_sampling_follows_the_priorities():
    """Rainbow's prioritised replay over 4 streams draws only rows that start a transition, in
    proportion to their priority (here: only the rows of stream 2 have any)."""
    import rainbow_moe_atari as rainbow

    k = 4
    replay = rainbow.PrioritizedFrameReplay(203, (2, 2), 4, 3, GAMMA, num_streams=k)
    assert replay.capacity == 200 and len(replay.priorities) == 200
    for row in random_streams(k, 130, seed=2):
        replay.add_rows(*row)
    replay.flush()
    lo, hi = replay._row_bounds()
    ids = torch.arange(lo, hi + 1)
    replay.update_priorities(ids, torch.where(ids % k == 2, 1.0, 0.0))
    torch.manual_seed(0)
    rows, priority = replay.sample_rows(2000)
    assert (rows % k == 2).all() and (priority == 1).all()
    assert not replay.final[rows % replay.capacity].any() and rows.min() >= lo and rows.max() <= hi


# ---- the agents ------------------------------------------------------------------------------
TINY = ["--env-id", "Pong", "--impala-channels", "4", "8", "8", "--expert-hidden", "16", "--num-experts", "4",
        "--batch-size", "8", "--buffer-size", "2000", "--min-replay-history", "100", "--iteration-steps", "200",
        "--target-update-period", "40", "--log-every", "100", "--device", "cpu", "--max-episode-frames", "400"]
RAINBOW_TINY = [*TINY, "--num-atoms", "11"]


def adam_steps(ckpt):
    """Gradient updates so far: Adam's step count."""
    return int(next(iter(ckpt["optimizer"]["state"].values()))["step"])


@pytest.mark.parametrize("script, flags", [("dqn_moe_atari.py", TINY), ("rainbow_moe_atari.py", RAINBOW_TINY)])
def test_k_envs_keep_the_updates_per_agent_step(tmp_path, script, flags):
    """With 4 environments a run makes the updates and the iterations of a one-environment run
    of the same length: an update every --update-period agent steps after
    --min-replay-history, an iteration every --iteration-steps; the replay holds a row per
    environment per vector step, and a final row for each episode (cut at 100 agent steps)."""
    counts = {}
    for k in (1, 4):
        runs = tmp_path / f"k{k}"
        proc = run_script(script, [*flags, "--total-frames", "2400", "--num-envs", str(k)], runs)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run_dir = only_run_dir(runs)
        ckpt, recs = checkpoint(run_dir), records(run_dir)
        counts[k] = adam_steps(ckpt)
        assert [r["step"] for r in recs[:-1]] == [200, 400, 600] and recs[-1]["step"] == 600
        episodes = sum(r["episodes"] for r in recs[:-1])
        if k == 4:
            assert ckpt["replay"]["added"] % 4 == 0 and ckpt["replay"]["streams"] == 4
            assert ckpt["replay"]["added"] == 600 + int(ckpt["replay"]["final"].sum())
            assert episodes == 4  # each environment: 100 steps, a restart, 50 steps
    assert counts[1] == counts[4] == len(range(100, 600, 4))


def test_k_envs_resume_after_sigkill(tmp_path):
    """A killed 4-environment run resumes from its checkpoint: the episodes in progress end as
    truncated ones (the vector env cannot save its emulators), every iteration is recorded
    once, and the updates are those of an uninterrupted run."""
    flags = [*TINY, "--total-frames", "3200", "--num-envs", "4", "--checkpoint-every", "100"]
    killed = kill_after_first_checkpoint("dqn_moe_atari.py", flags, tmp_path / "killed", latest_step=700)
    before = checkpoint(killed)["loop"]["step"]
    resumed = run_script("dqn_moe_atari.py", [*flags, "--resume", killed], tmp_path / "unused")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    recs = records(killed)
    assert [r["iteration"] for r in recs[:-1]] == [0, 1, 2, 3] and recs[-1]["step"] == 800
    ckpt = checkpoint(killed)
    assert adam_steps(ckpt) == len(range(100, 800, 4)) and ckpt["loop"]["step"] == 800 > before


AUDITED = [("dqn_moe_atari", dict(num_envs=1)), ("dqn_moe_atari", dict(num_envs=4)),
           ("rainbow_moe_atari", dict(num_envs=1, num_atoms=11)), ("der_moe_atari100k", {}), ("drq_moe_atari100k", {}),
           ("drq_moe_atari100k", dict(num_envs=3))]


@pytest.mark.parametrize("module_name, extra", AUDITED)
def test_updates_during_a_step_read_no_outcome_of_it(tmp_path, monkeypatch, module_name, extra):
    """Every agent learns between `start_rows` and `finish_rows`: the updates it runs there
    (recorded through the replay's `gather`) read actions, rewards and terminations only of rows
    before the open ones, so they are the updates of the store-then-learn order (the test above)."""
    import importlib

    agent = importlib.import_module(module_name)
    replay_class, audit = agent.FrameReplay, {"open": False, "during": 0}
    start_rows, finish_rows, gather = replay_class.start_rows, replay_class.finish_rows, replay_class.gather

    def audited_start(self, *a, **k):
        start_rows(self, *a, **k)
        audit["open"] = True

    def audited_finish(self, *a):
        audit["open"] = False
        finish_rows(self, *a)

    def audited_gather(self, rows):
        if audit["open"]:
            audit["during"] += 1
            newest_read = int(rows.max()) + (self.n_step - 1) * self.streams  # the last reward or termination read
            assert newest_read < self.open_row, (newest_read, self.open_row)
        return gather(self, rows)

    monkeypatch.setattr(replay_class, "start_rows", audited_start)
    monkeypatch.setattr(replay_class, "finish_rows", audited_finish)
    monkeypatch.setattr(replay_class, "gather", audited_gather)
    common = dict(env_id="Pong", device="cpu", runs_dir=str(tmp_path), num_experts=2, expert_hidden=16, batch_size=8,
                  min_replay_history=100, log_every=10**9, max_episode_frames=400)
    if module_name.endswith("atari100k"):
        args = agent.Args(**common, total_steps=300, iteration_steps=10**9, eval_episodes=1, **extra)
    else:
        args = agent.Args(**common, impala_channels=(4, 8, 8), buffer_size=2000, total_frames=4 * 300,
                          iteration_steps=10**9, **extra)
    agent.main(args)
    assert audit["during"] >= 40  # the updates did run while a step was open


@pytest.mark.parametrize("flags, needle", [(["--num-envs", "0"], "--num-envs"),
                                           (["--num-envs", "2", "--capture-video"], "--capture-video"),
                                           (["--num-envs", "2", "--emulator-process"], "--emulator-process")])
def test_bad_num_envs(tmp_path, flags, needle):
    assert_one_line_error(run_script("dqn_moe_atari.py", [*TINY, *flags], tmp_path), needle)


def test_missing_rom_file_fails_clearly(tmp_path):
    assert_one_line_error(run_script("dqn_moe_atari.py", [*TINY, "--rom-file", str(tmp_path / "none.bin")], tmp_path),
                          "--rom-file", "no such file")
