"""DER (data-efficient Rainbow) with a Mixture-of-Experts penultimate layer on Atari 100k, one file.

Section 5.2 of "Mixtures of Experts Unlock Parameter Scaling for Deep RL" (Obando-Ceron et al.,
ICML 2024) and appendix B table 1: Data-Efficient Rainbow (van Hasselt et al. 2019) on the Atari
100k benchmark (Kaiser et al. 2020): 100,000 agent steps (400k frames) per game without sticky
actions, then 100 evaluation episodes whose mean return is the score. Details follow the official
code, google/dopamine `labs/moes` (config `DER.gin`, agent `rainbow_100k_moe_agent.py`, runner
`labs/atari_100k/atari_100k_runner.py`): C51 with 51 atoms, 10-step returns, one update per agent
step, noisy nets, dueling, double DQN, prioritised replay, target update every 2000 steps, the
Nature CNN encoder and 4 experts. Figures 12 and 16 train for 50M frames: `--long-schedule`.
A difference from Dopamine stays by default: its frame skip stops at a lost life, ours plays four
frames unless `--life-loss-frame-skip cut` (benchmark/RESULTS.md, "The frame skip cut at a lost life").

    python der_moe_atari100k.py --env-id Breakout --moe soft --num-experts 4
    python der_moe_atari100k.py --env-id Breakout --moe none                       # baseline
    python der_moe_atari100k.py --env-id Breakout --num-envs 4    # 4 emulators stepped together (not the protocol)
    python der_moe_atari100k.py --env-id Breakout --encoder impala --long-schedule # figure 16
    python der_moe_atari100k.py --env-id Breakout --life-loss-frame-skip cut  # Dopamine's frame skip at a lost life
    python der_moe_atari100k.py --help
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Optional

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from ale_py.vector_env import AtariVectorEnv

gym.register_envs(ale_py)
AGENT = "der"


@dataclass
class Args:
    # --- experiment ---
    exp_name: str = "der_moe"
    """name of the experiment, part of the run folder's name"""
    seed: int = 1
    """seed of the run (network, replay sampling, exploration and environment)"""
    torch_deterministic: bool = True
    """set `torch.backends.cudnn.deterministic`"""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`"""
    track: bool = False
    """log to Weights & Biases as well (set WANDB_MODE=offline to log without network)"""
    wandb_project_name: str = "moe-rl"
    """the wandb project"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team)"""
    capture_video: bool = False
    """record videos of training episodes into the run folder's `videos/`"""
    runs_dir: str = "runs"
    """where run folders are created"""
    log_every: int = 2_000
    """agent steps between two reads of the losses and SPS (the only host reads of the loss)"""
    checkpoint_every: int = 0
    """agent steps between two checkpoints (0: only at the end of training)"""
    resume: Optional[str] = None
    """a run folder to resume from its checkpoint (pass the same flags as the run had)"""

    # --- environment and protocol (Atari 100k: DER.gin, DataEfficientAtariRunner) ---
    env_id: str = "Pong"
    """game: a short name (`Pong`, `MsPacman`) or a full gymnasium id (`ALE/Pong-v5`)"""
    sticky_actions: bool = False
    """repeat the previous action with probability 0.25 at every frame (off in Atari 100k)"""
    terminal_on_life_loss: bool = True
    """a lost life ends the agent's episode (terminal transition, fresh frame stack) while the game goes on"""
    life_loss_frame_skip: Literal["full", "cut", "cut_2021"] = "full"
    """the step that loses a life: `full` plays its four frames (gymnasium's AtariPreprocessing);
    `cut` stops at the frame that lost it, which shifts the frame phase of every later step
    (Dopamine's AtariPreprocessing under terminal_on_life_loss, since April 2022); `cut_2021` the same,
    without reading that frame's screen (the 2021 code of the published runs). A cut needs
    --terminal-on-life-loss and --num-envs 1, and plays the evaluation in child processes"""
    max_noops: int = 30
    """each episode starts with 0..max_noops-1 random NOOP actions (the official 100k runner)"""
    noop_unit: Literal["step", "frame"] = "step"
    """the no-ops' unit: agent steps of 4 frames (the current official runner, which the MoE paper's
    code runs) or single emulator frames, after which the agent sees the game's first screen (the
    2021 runner that made the published DER and DrQ(eps) runs); frame needs --num-envs 1"""
    max_episode_frames: int = 108_000
    """frames after which an episode is truncated (27,000 agent steps)"""
    num_envs: int = 1
    """environments stepped together (ale-py's threaded vector env when above 1); --total-steps
    counts the agent steps of all of them and the updates stay per agent step; 1 is the protocol"""
    emulator_process: bool = False
    """with --num-envs 1: step the emulator in a child process, beside the loop's other work (the
    same frames; resume stays exact); off, it steps in the loop's process"""
    rom_file: Optional[str] = None
    """load the game from this ROM file instead of ale-py's own: atari-py 0.2.6's BankHeist (md5
    83b8c01c...) is a PAL cartridge that the 2021 published runs may have used (benchmark/RESULTS.md)"""
    total_steps: int = 100_000
    """agent steps of training (100k = 400k frames)"""
    iteration_steps: int = 10_000
    """agent steps per iteration (the official 10 x 10,000); an iteration logs its training episodes"""
    eval_every: int = 0
    """agent steps between two evaluations (0: one evaluation, after training)"""
    eval_episodes: int = 100
    """episodes of an evaluation, run in parallel; their mean return is the score"""
    eval_epsilon: float = 0.001
    """exploration epsilon during evaluation"""
    eval_expert_noise: bool = True
    """keep the experts' noise on in evaluation, as the official code does (the heads' is always off)"""
    eval_threads: int = 0
    """emulator threads of an evaluation (0: one per core this process may use, up to --eval-episodes,
    whatever OMP_NUM_THREADS says); the episodes and their returns do not depend on it"""
    save_model: bool = False
    """after training, write the network's weights to model.pt in the run folder (for --eval-model)"""
    eval_model: Optional[str] = None
    """evaluate this model.pt (or a run's checkpoint.pt) instead of training: one evaluation of
    --eval-episodes episodes under this command's protocol flags (--noop-unit, --eval-epsilon,
    --seed, ...) and the network flags it was trained with; recorded as a finished run's score"""
    long_schedule: bool = False
    """figures 12/16: 12.5M agent steps (50M frames), an evaluation every 250k; overrides --total-steps and --eval-every"""

    # --- DER (appendix B table 1, configs/DER.gin) ---
    learning_rate: float = 1e-4
    """Adam learning rate"""
    adam_eps: float = 1.5e-4
    """Adam epsilon"""
    buffer_size: int = 1_000_000
    """replay capacity in transitions (only the rows a run can write are allocated)"""
    gamma: float = 0.99
    """discount factor"""
    n_step: int = 10
    """update horizon (n-step returns)"""
    batch_size: int = 32
    """batch size of an update"""
    min_replay_history: int = 1_600
    """agent steps before learning starts (epsilon stays at 1 until then)"""
    update_period: int = 1
    """agent steps between two gradient updates"""
    replay_ratio: Optional[float] = None
    """gradient updates per agent step; overrides --update-period"""
    target_update_period: int = 2_000
    """agent steps between two copies of the online network into the target network"""
    epsilon_train: float = 0.01
    """final exploration epsilon (with --noisy the official agent explores by noise alone: epsilon 0)"""
    epsilon_decay_steps: int = 2_000
    """agent steps over which epsilon decays linearly from 1, after --min-replay-history"""
    noisy: bool = True
    """noisy nets: factorised noisy heads and expert first layers (official); exploration by noise"""
    dueling: bool = True
    """dueling heads: value and advantage streams"""
    double: bool = True
    """double DQN: the online network picks the next action, the target network values it"""
    prioritized: bool = True
    """proportional prioritised replay (priority sqrt(loss), importance weights 1/sqrt(priority))"""
    num_atoms: int = 51
    """atoms of the C51 return distribution (1: a scalar Q-value with the Huber loss)"""
    v_max: float = 10.0
    """the support of the return distribution is [-v_max, v_max]"""
    data_augmentation: bool = False
    """DrQ's random shifts and intensity on sampled states (off in DER.gin)"""
    shift_per: Literal["sample", "batch"] = "sample"
    """DrQ's random shift: one per sample (the official code from February 2022 on, which the MoE
    paper's code runs) or one for the whole batch (the official code of 2021, which made the published
    DrQ(eps) runs of Agarwal et al. 2021); needs --data-augmentation"""

    # --- network (section 3, figure 2; appendix D for the filter size) ---
    encoder: Literal["impala", "nature"] = "nature"
    """`nature` (Mnih et al. CNN, the official MoE DER config) or `impala` (ResNet of Espeholt et al., figures 12 and 16)"""
    impala_channels: tuple[int, ...] = (16, 32, 32)
    """channels of the Impala stacks (the official code's; the paper's table 4 says 32 64 64)"""
    filter_size: int = 3
    """kernel size of the Impala convolutions (appendix D: 3, 4, 6)"""
    tokenizer: Literal["conv", "feat", "samp"] = "conv"
    """PerConv (h*w tokens of d channels), PerFeat (d tokens of h*w), PerSamp (1 token); figure 3"""
    moe: Literal["none", "soft", "top1"] = "soft"
    """the penultimate layer: `none` (dense baseline), `soft` (Soft MoE), `top1` (Top1-MoE)"""
    num_experts: int = 4
    """number of experts (the official config: 4; the paper's figures go to 8)"""
    capacity_factor: float = 1.0
    """slots per expert (Soft MoE) or tokens per expert (Top1) = ceil(tokens * factor / experts)"""
    expert_hidden: int = 512
    """hidden width of each expert, and of the baseline's dense layer"""
    expert_hidden_divisor: bool = False
    """divide --expert-hidden by --num-experts (figure 5)"""
    scale_hidden: bool = False
    """baseline only: widen the dense layer to expert_hidden * num_experts (figure 1)"""
    random_phi: bool = False
    """Soft MoE: draw Phi from N(0,1) at every forward pass instead of learning it (figure 8)"""
    normalize: bool = False
    """Soft MoE: l2-normalise tokens and Phi in the routing logits, learned scale (section 5.3)"""
    moe_variant: Literal["regular", "big", "all"] = "regular"
    """section 5.3: `regular` MoE at the penultimate layer, `big` experts are whole networks, `all` a Soft MoE at every layer"""
    router_noise: bool = False
    """Top1: add N(0, 1/num_experts) noise to the router logits"""
    importance_loss_weight: float = 0.0
    """Top1: weight of the importance auxiliary loss (figure 9 uses 1.0)"""
    load_loss_weight: float = 0.0
    """Top1: weight of the load auxiliary loss (figure 9 uses 1.0)"""
    dormant_tau: float = 0.025
    """threshold of the Sokar et al. (2023) dormant-neuron score (the official metric uses 0)"""

    # --- speed (none of these change the algorithm) ---
    cudagraphs: bool = False
    """capture the update and the action selection in CUDA graphs"""
    compile: bool = False
    """torch.compile the update and the action selection"""
    triton_convs: bool = True
    """on CUDA, the Impala encoder's 3x3 convolutions and max-pool in this file's Triton kernels
    (faster than cuDNN at batch 32; the same TF32 arithmetic); --no-triton-convs: cuDNN's"""
    tf32: bool = True
    """on CUDA, TF32 matrix units for float32 matmuls and convolutions (products rounded to a
    10-bit mantissa, sums in float32); --no-tf32: full float32, as on the CPU, slower, and the
    Triton convolutions (TF32) stay off"""


# ============================================================================================
# Environment
# ============================================================================================
# ---- block: atari_env ----
def fail(message: str):
    """End the run with one line on stderr and exit status 1."""
    raise SystemExit(f"error: {message}")


def resolve_env_id(name: str) -> str:
    """`Pong` -> `ALE/Pong-v5`; a registered gymnasium id is kept; anything else fails clearly."""
    if name in gym.registry:
        if "ale_py" not in str(gym.registry[name].entry_point):
            fail(f"--env-id {name} is not an Atari game: this agent runs ALE games (e.g. Pong, ALE/Breakout-v5)")
        return name
    candidate = f"ALE/{name}-v5"
    if candidate in gym.registry:
        return candidate
    games = sorted(k[4:-3] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))
    close = difflib.get_close_matches(name, games, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Known games include {', '.join(games[:5])}, ..."
    fail(f"unknown game '{name}' for --env-id.{hint}")


class DopamineFrameSkip(gym.wrappers.AtariPreprocessing):
    """gymnasium's AtariPreprocessing (frame skip 4, a max over the last two frames, grayscale
    84x84) with Dopamine's rule for a lost life (`atari_lib.AtariPreprocessing.step`): with
    `life_loss` "cut" or "cut_2021" a step stops at the frame that loses a life, as Dopamine's
    does under terminal_on_life_loss (every Atari 100k config), so it plays 1 to 4 frames and
    shifts every later step's frame phase; "full" plays all four. The pooled screens are the third
    and fourth frames', in Dopamine's buffers 0 and 1 (gymnasium's 1 and 0 with "full"; pooled in
    place into buffer 0 by both): a step that stops early keeps in a buffer it did not reach what an
    earlier step left there. "cut" reads the screen of the frame that ends the step, a lost life's
    or the game's last, before stopping (Dopamine since April 2022, commit 9e8c66a, which the MoE
    paper runs); "cut_2021" and "full" stop before it (the 2021 code of the published DER and
    DrQ(eps) runs; gymnasium). The game goes on after a lost life: `terminated` is game over.
    Each frame, with its sticky action, goes to the emulator through `frame`."""

    def __init__(self, env, life_loss: str = "full", sticky_probability: float = 0.0, seed: Optional[int] = None,
                 recording: bool = False):
        super().__init__(env, noop_max=0, frame_skip=4, screen_size=84, grayscale_obs=True)
        self.life_loss = life_loss
        self.buffer_of_frame = {2: 1, 3: 0} if life_loss == "full" else {2: 0, 3: 1}
        self.sticky_probability, self.sticky_rng = sticky_probability, np.random.default_rng(seed)
        self.played_action = ale_py.Action.NOOP  # the ALE action of the last frame; NOOP after a reset, as in ALE
        # held here: the base class's `self.ale` walks the wrappers at every access, 8 times a step
        self.emulator, self.action_set = env.unwrapped.ale, env.unwrapped._action_set
        self.recording = recording  # a RecordVideo wrapper films the frames gymnasium's env steps
        self.action_index = {a: i for i, a in enumerate(self.action_set)}  # for gymnasium's step

    def reset(self, *, seed: Optional[int] = None, options=None):
        if seed is not None:
            self.sticky_rng = np.random.default_rng(seed)
        self.played_action = ale_py.Action.NOOP
        return super().reset(seed=seed, options=options)

    def frame(self, action: ale_py.Action) -> tuple[float, bool, bool]:
        """One emulator frame of an ALE action: its reward, game over, and the episode's frame limit
        reached (ALE's own limit, in its saved state). Sticky actions (Machado et al. 2018; the
        paper's protocol, section 4): with probability 0.25 the frame plays the last frame's action
        instead. ALE's emulator can do this itself, but its saved state leaves out the last action,
        so a restored game would diverge (`get_env_state`): here the action and the draws' RNG are
        ours, and saved. The frame goes straight to the emulator, as gymnasium's step would, less
        the screen that step reads and this class drops (a sixth of a step: RESULTS.md, "ninth pass")."""
        if self.sticky_probability == 0 or self.sticky_rng.random() >= self.sticky_probability:
            self.played_action = action
        if self.recording and self.played_action in self.action_index:  # NOOP may be outside the set
            _, reward, terminated, truncated, _ = self.env.step(self.action_index[self.played_action])
            return reward, terminated, truncated
        reward = self.emulator.act(self.played_action)
        return reward, self.emulator.game_over(with_truncation=False), self.emulator.game_truncated()

    def step(self, action):
        total_reward, terminated, truncated, ale_action = 0.0, False, False, self.action_set[action]
        for t in range(4):
            reward, terminated, truncated = self.frame(ale_action)
            total_reward += reward
            lives = self.emulator.lives()
            lost_life, self.lives = lives < self.lives, lives
            stop = terminated or truncated or (lost_life and self.life_loss != "full")
            if t >= 2 and not (stop and self.life_loss != "cut"):
                self.emulator.getScreenGrayscale(self.obs_buffer[self.buffer_of_frame[t]])
            if stop:
                break
        return self._get_obs(), total_reward, terminated, truncated, {"lives": self.lives}


def make_env(env_id: str, seed: int, sticky_actions: bool, max_episode_frames: int, video_dir: Optional[str] = None,
             life_loss: str = "full"):
    """One Atari environment with Dopamine's preprocessing: frame skip 4 with a max over the last
    two frames, grayscale 84x84, no no-op starts, no life-loss terminals (frames are stacked by
    the agent and the replay, not here), and the frame skip at a lost life of `DopamineFrameSkip`.
    Any ALE id (v5, v4, NoFrameskip) gets this protocol."""
    kwargs = dict(render_mode="rgb_array") if video_dir else {}
    kwargs.update(
        frameskip=1,
        repeat_action_probability=0.0,  # sticky actions are DopamineFrameSkip's, so that a checkpoint saves them
        full_action_space=False,
        max_num_frames_per_episode=max_episode_frames,
        obs_type="grayscale",  # AtariPreprocessing reads the screens itself and drops this one: the cheapest it accepts
    )
    env = gym.make(env_id, max_episode_steps=max_episode_frames, **kwargs)
    if video_dir:
        env = gym.wrappers.RecordVideo(env, video_dir, disable_logger=True)
    env = DopamineFrameSkip(env, life_loss, 0.25 if sticky_actions else 0.0, seed, recording=bool(video_dir))
    env.action_space.seed(seed)
    return env


def use_rom_file(game: str, path: str, private_copy: bool = True) -> None:
    """From now on this process loads `game` (ale-py's name, e.g. bank_heist) from the ROM file
    at `path` instead of ale-py's own (`--rom-file`): every environment, vector or not, asks
    ale_py.roms.get_rom_path for its ROM, at creation and at each seeded reset. So that a run
    outlives its ROM file being moved, replaced or deleted, the file is first copied into a
    folder of this process's own, removed at exit, and the copy is loaded (child processes load
    the parent's copy: `private_copy` False)."""
    lookup = ale_py.roms.get_rom_path
    original, overrides = getattr(lookup, "original", lookup), dict(getattr(lookup, "overrides", {}))
    sources = dict(getattr(lookup, "sources", {}))
    sources[game] = os.path.abspath(path)
    if private_copy:
        folder = tempfile.mkdtemp(prefix="moe-rl-roms-")
        atexit.register(shutil.rmtree, folder, True)
        path = shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
    overrides[game] = os.path.abspath(path)

    def get_rom_path(name: str):
        return overrides[name] if name in overrides else original(name)

    get_rom_path.original, get_rom_path.overrides, get_rom_path.sources = original, overrides, sources
    ale_py.roms.get_rom_path = get_rom_path


def rom_files() -> dict:
    """The games `use_rom_file` redirected in this process: {game: the ROM file loaded}."""
    return dict(getattr(ale_py.roms.get_rom_path, "overrides", {}))


def rom_provenance(env_id: str) -> dict:
    """Which emulator and ROM a run plays, for its config.json: the ROM file given (or ale-py's)
    and its md5, which tells apart cartridges of one name: atari-py 0.2.6 shipped other ROMs than
    ale-py's for 10 of the 26 Atari 100k games, and the scores of some differ (benchmark/RESULTS.md,
    "BankHeist: the same emulator, another ROM")."""
    game = gym.spec(env_id).kwargs["game"]
    path = str(ale_py.roms.get_rom_path(game))
    with open(path, "rb") as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    return {"ale_py": ale_py.__version__, "rom": getattr(ale_py.roms.get_rom_path, "sources", {}).get(game, path),
            "rom_md5": md5}


def get_env_state(env) -> dict:
    """What an exact resume needs of the environment: the emulator (its frame counts included),
    the sticky actions' RNG and last action, and the lives and screens of `DopamineFrameSkip`,
    which a cut step reads."""
    return {"ale": env.unwrapped.ale.cloneState(include_rng=True), "lives": env.lives,
            "screens": [b.copy() for b in env.obs_buffer], "sticky_rng": env.sticky_rng.bit_generator.state,
            "played_action": env.played_action.value}


def set_env_state(env, state: dict) -> None:
    env.unwrapped.ale.restoreState(state["ale"])
    env.lives = state.get("lives", env.unwrapped.ale.lives())
    for buffer, screen in zip(env.obs_buffer, state.get("screens", [])):
        buffer[:] = screen
    if "sticky_rng" in state:  # older checkpoints: ALE drew the sticky actions, and lost the last one
        env.sticky_rng.bit_generator.state = state["sticky_rng"]
        env.played_action = ale_py.Action(state["played_action"])


def emulator_threads(num_envs: int) -> int:
    """Threads for `num_envs` emulators: one each, at most one per core, or OMP_NUM_THREADS where
    it is set (several runs sharing a machine)."""
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]
    cores = int(omp) if omp.isdigit() and int(omp) > 0 else os.cpu_count() or 1
    return min(num_envs, cores)


def make_vector_env(env_id: str, num_envs: int, sticky_actions: bool, max_episode_frames: int, num_threads: int,
                    noop_frames: int = 0):
    """`num_envs` environments in ale-py's threaded C++ vector env with `make_env`'s protocol and
    frames (pixel for pixel: tests/test_num_envs.py): single frames, no fire resets, unclipped
    rewards, no life-loss terminals, and no no-op starts unless `noop_frames`: then each reset
    takes 0..noop_frames-1 NOOP emulator frames, drawn by ale-py."""
    return AtariVectorEnv(gym.spec(env_id).kwargs["game"], num_envs,
                          repeat_action_probability=0.25 if sticky_actions else 0.0,
                          max_num_frames_per_episode=max_episode_frames, stack_num=1, noop_max=noop_frames,
                          use_fire_reset=False, reward_clipping=False, episodic_life=False, num_threads=num_threads)


def emulator_call(env, command: str, arg=None):
    """One call on a `make_env` environment, by name: what `LocalEmulator` runs in the loop's
    process and `EmulatorProcess` in its child. Lives come back with every result."""
    ale = env.unwrapped.ale
    if command == "step":
        obs, reward, terminated, truncated, info = env.step(arg)
        return obs, float(reward), bool(terminated), bool(truncated), info["lives"]
    if command == "reset":
        obs, info = env.reset(seed=arg)
        return obs, info["lives"]
    if command == "noop_frames":  # raw NOOP emulator frames (sticky too); the observation stays as it was
        for _ in range(arg):
            env.frame(ale_py.Action.NOOP)
        env.lives = ale.lives()
        return ale.lives(), ale.game_over()
    if command == "state":
        return get_env_state(env)
    if command == "set_state":
        set_env_state(env, arg)
        return ale.lives()
    if command == "num_actions":
        return int(env.action_space.n)
    raise ValueError(f"unknown emulator command {command}")


class LocalEmulator:
    """`make_env(*env_args)`'s environment in the loop's own process: a call `start`s and runs at `finish`."""

    def __init__(self, env_args: tuple):
        self.env = make_env(*env_args)
        self.pending = None

    def start(self, command: str, arg=None) -> None:
        self.pending = (command, arg)

    def finish(self):
        return emulator_call(self.env, *self.pending)

    def call(self, command: str, arg=None):
        self.start(command, arg)
        return self.finish()

    def close(self) -> None:
        self.env.close()


def emulator_process_main(conn, env_args: list, roms: dict) -> None:
    """A child process of `EmulatorProcess` or `EmulatorGroups`: one `make_env` environment per
    tuple of `env_args`, running the calls it receives ({env: arg} in, {env: result} out) until
    told to close, or until the parent's end of the pipe goes away. `roms`: the parent's `rom_files`."""
    for game, path in roms.items():
        use_rom_file(game, path, private_copy=False)
    envs = [make_env(*a) for a in env_args]
    try:
        while True:
            command, args = conn.recv()
            if command == "close":
                break
            conn.send({i: emulator_call(envs[i], command, arg) for i, arg in args.items()})
    except EOFError:
        pass
    for env in envs:
        env.close()


def start_emulator_process(env_args: list):
    """`emulator_process_main` in a new process: returns the pipe's end and the process."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with CUDA and thread pools
    conn, child = context.Pipe()
    process = context.Process(target=emulator_process_main, args=(child, env_args, rom_files()), daemon=True)
    process.start()
    child.close()
    return conn, process


class EmulatorProcess(LocalEmulator):
    """`make_env`'s environment in a child process (`--emulator-process`): a step `start`ed before
    the loop's other work runs beside it, as gymnasium's env holds the GIL for its whole step and
    a thread could not. The emulator state still comes back for checkpoints, so resume stays exact."""

    def __init__(self, env_args: tuple):
        self.conn, self.process = start_emulator_process([env_args])

    def start(self, command: str, arg=None) -> None:
        self.conn.send((command, {0: arg}))

    def finish(self):
        return self.conn.recv()[0]

    def close(self) -> None:
        self.conn.send(("close", None))
        self.process.join(timeout=30)


class AtariEnvs:
    """K Atari environments stepped together with `make_env`'s protocol: `send` the actions,
    do other work, `recv` the (K, 84, 84) frames, rewards, terminations and truncations. An
    environment whose episode ended starts the next one at its following call, which ignores
    its action and is not an agent step (ale-py's NEXT_STEP autoreset). K = 1 is a gymnasium env
    whose emulator state a checkpoint saves (exact resume), stepped at `recv` in the loop's
    process, or from `send` on in a child process (`emulator_process`); K > 1 is ale-py's threaded
    C++ vector env (`make_vector_env`), stepping while the learner works, with no emulator state
    to save, and no frame skip cut at a lost life (`life_loss`: `DopamineFrameSkip`)."""

    def __init__(self, env_id: str, num_envs: int, seed: int, sticky_actions: bool, max_episode_frames: int,
                 video_dir: Optional[str] = None, emulator_process: bool = False, life_loss: str = "full"):
        self.num_envs = num_envs
        if num_envs == 1:
            emulator = EmulatorProcess if emulator_process else LocalEmulator
            self.env = emulator((env_id, seed, sticky_actions, max_episode_frames, video_dir, life_loss))
            self.num_actions = self.env.call("num_actions")
        elif life_loss != "full":
            fail(f"a frame skip cut at a lost life ({life_loss}) needs one environment: ale-py's vector env plays four frames")
        else:
            self.env = make_vector_env(env_id, num_envs, sticky_actions, max_episode_frames, emulator_threads(num_envs))
            self.num_actions = int(self.env.single_action_space.n)
        self.ended = np.zeros(num_envs, dtype=bool)  # the last step ended the episode: the next call restarts
        self.lives = np.zeros(num_envs, dtype=np.int64)  # each game's lives after the last call

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        self.ended[:] = False
        if self.num_envs == 1:
            obs, self.lives[0] = self.env.call("reset", seed)
            return obs[None]
        obs, info = self.env.reset(seed=seed)
        self.lives[:] = info["lives"]
        return obs[:, -1]

    def send(self, actions: np.ndarray) -> None:
        if self.num_envs > 1:
            self.env.send(actions)
        elif self.ended[0]:
            self.env.start("reset")
        else:
            self.env.start("step", int(actions[0]))

    def recv(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.num_envs > 1:
            obs, reward, terminated, truncated, info = self.env.recv()
            frames, reward, lives = obs[:, -1], reward.astype(np.float64), info["lives"]
        elif self.ended[0]:
            obs, lives = self.env.finish()
            frames, reward, terminated, truncated = obs[None], np.zeros(1), np.zeros(1, bool), np.zeros(1, bool)
        else:
            obs, r, term, trunc, lives = self.env.finish()
            frames, reward, terminated, truncated = obs[None], np.array([r]), np.array([term]), np.array([trunc])
        self.ended = terminated | truncated
        self.lives[:] = lives
        return frames, reward, terminated, truncated

    def noop_frames(self, count: int) -> Optional[np.ndarray]:
        """`count` NOOP emulator frames of the one environment (K = 1), not agent steps: the 2021
        official runner's no-op start, which leaves the observation as it was. Returns None, or the
        first frame of a new game if the game ended in them."""
        self.lives[0], game_over = self.env.call("noop_frames", count)
        return self.reset()[0] if game_over else None

    def state(self) -> Optional[dict]:
        """The emulator with its RNG (sticky actions); None for K > 1."""
        if self.num_envs > 1:
            return None
        return {**self.env.call("state"), "ended": bool(self.ended[0])}

    def set_state(self, state: dict) -> None:
        self.lives[0] = self.env.call("set_state", state)
        self.ended[0] = state["ended"]

    def close(self) -> None:
        self.env.close()
# ---- end block: atari_env ----


# ---- block: encoders ----
def xavier_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """Glorot uniform, the official code's initialiser for dense and conv kernels (biases zero)."""
    return nn.init.xavier_uniform_(weight)


def lecun_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Flax's lecun_normal: a normal of std sqrt(1/fan_in) truncated at two std, rescaled so the
    truncated distribution keeps that std (0.8796 is the std of a unit normal cut at +-2)."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    """A dense layer initialised like the official code: xavier-uniform kernel, zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/flax 'SAME' padding (before, after) of one spatial axis; may be asymmetric."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A convolution padded like flax's default 'SAME' (84x84 -> 11x11 through the Nature CNN,
    as in the official code, where PyTorch's default padding would give 7x7)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, init: str = "xavier"):
        super().__init__(in_ch, out_ch, kernel, stride)
        if init == "xavier":
            xavier_uniform_(self.weight)
        else:
            lecun_normal_(self.weight, fan_in=in_ch * kernel * kernel)
        nn.init.zeros_(self.bias)

    def forward(self, x, relu_input: bool = False):
        """The convolution of x, or of F.relu(x) with relu_input (fused into the Triton kernels)."""
        if conv_kernel_applies(self, x):  # 3x3 stride 1 on CUDA: the Triton kernels of the conv_kernels block
            return conv3x3_same(x, self.weight, self.bias, relu_input)
        x = F.relu(x) if relu_input else x
        (h0, h1), (w0, w1) = (same_padding(s, self.kernel_size[0], self.stride[0]) for s in x.shape[-2:])
        if (h0, w0) == (h1, w1):  # symmetric: the convolution pads by itself (no extra kernel)
            return F.conv2d(x, self.weight, self.bias, self.stride, (h0, w0))
        return super().forward(F.pad(x, (w0, w1, h0, h1)))


def max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    if pool_kernel_applies(x, kernel, stride):  # on CUDA: the Triton kernels of the conv_kernels block
        return max_pool3x3_same(x)[0]
    (h0, h1), (w0, w1) = (same_padding(s, kernel, stride) for s in x.shape[-2:])
    if (h0, w0) == (h1, w1):
        return F.max_pool2d(x, kernel, stride, padding=(h0, w0))  # pads with -inf
    return F.max_pool2d(F.pad(x, (w0, w1, h0, h1), value=float("-inf")), kernel, stride)


class ResidualBlock(nn.Module):
    """relu -> conv -> relu -> conv, plus the input; each conv applies the ReLU before it (inside
    its kernels on the GPU). The official code leaves these two convs at flax's default
    initialiser (lecun_normal), unlike every other layer."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv0 = SameConv2d(channels, channels, kernel, init="lecun")
        self.conv1 = SameConv2d(channels, channels, kernel, init="lecun")

    def forward(self, x):
        return x + self.conv1(self.conv0(x, relu_input=True), relu_input=True)


class ImpalaStack(nn.Module):
    """conv -> max-pool 3x3 stride 2 -> two residual blocks (Espeholt et al. 2018)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, final_relu: bool = False):
        super().__init__()
        self.conv = SameConv2d(in_ch, out_ch, kernel)
        self.blocks = nn.Sequential(ResidualBlock(out_ch, kernel), ResidualBlock(out_ch, kernel))
        self.final_relu = final_relu

    def forward(self, x):
        x = self.blocks(max_pool_same(self.conv(x)))
        return F.relu(x) if self.final_relu else x


class ConvReLU(SameConv2d):
    def forward(self, x):
        return F.relu(super().forward(x))


def encoder_stages(kind: str, in_ch: int = 4, impala_channels=(16, 32, 32), filter_size: int = 3) -> list[nn.Module]:
    """The encoder as a list of stages (the `all` variant puts a Soft MoE around each one).
    Impala: three stacks, ReLU at the end; Nature: conv 32 8x8/4, 64 4x4/2, 64 3x3/1, ReLU each."""
    if kind == "impala":
        chans = [in_ch, *impala_channels]
        last = len(impala_channels) - 1
        return [ImpalaStack(chans[i], chans[i + 1], filter_size, final_relu=i == last) for i in range(last + 1)]
    if kind == "nature":
        return [ConvReLU(in_ch, 32, 8, 4), ConvReLU(32, 64, 4, 2), ConvReLU(64, 64, 3, 1)]
    raise ValueError(f"unknown encoder {kind}")


def preprocess(obs: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [0, 1], channels-last on the GPU like the network (memory_format);
    float frames (already scaled, e.g. augmented) pass through."""
    if obs.dtype != torch.uint8:
        return obs
    x = obs.float() / 255.0
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
# ---- end block: encoders ----


# ---- block: tokenizers ----
def tokenize(features: torch.Tensor, kind: str) -> torch.Tensor:
    """Encoder output (B, d, h, w) -> tokens (B, m, token_dim) (section 3, figure 3).
    conv (PerConv): h*w tokens of dimension d, row-major over (h, w) like the official reshape.
    feat (PerFeat): d tokens of dimension h*w.
    samp (PerSamp): one token, the whole output flattened in (h, w, d) order."""
    b, d, h, w = features.shape
    if kind == "conv":
        return features.permute(0, 2, 3, 1).reshape(b, h * w, d)
    if kind == "feat":
        return features.reshape(b, d, h * w)
    if kind == "samp":
        return features.permute(0, 2, 3, 1).reshape(b, 1, h * w * d)
    raise ValueError(f"unknown tokenizer {kind}")


def token_shape(feature_shape: tuple[int, int, int], kind: str) -> tuple[int, int]:
    """(num_tokens, token_dim) that `tokenize` gives for a (d, h, w) feature map."""
    d, h, w = feature_shape
    return {"conv": (h * w, d), "feat": (d, h * w), "samp": (1, h * w * d)}[kind]
# ---- end block: tokenizers ----


# ---- block: moe ----
def scaled_noise(shape, device) -> torch.Tensor:
    """f(eps) = sign(eps) sqrt(|eps|), eps ~ N(0, 1): the factorised noise of Fortunato et al."""
    eps = torch.randn(shape, device=device)
    return eps.sign() * eps.abs().sqrt()


class NoisyLinear(nn.Module):
    """Factorised Gaussian noisy dense layer (Fortunato et al. 2018) as Dopamine's NoisyNetwork:
    W = mu_W + sigma_W * (f(eps_in) f(eps_out)^T), b = mu_b + sigma_b * f(eps_out), with
    mu ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and sigma = 0.1 / sqrt(fan_in). `noise`: `sample`
    (a fresh draw for every row of the batch, as the official online loss), `shared` (one draw
    for the batch) or `off`; `set_noise` sets it on a whole network."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_dim).uniform_(-bound, bound))
        self.sigma_weight = nn.Parameter(torch.full((out_dim, in_dim), 0.1 * bound))
        self.sigma_bias = nn.Parameter(torch.full((out_dim,), 0.1 * bound))
        self.noise = "sample"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.noise == "off":
            return y
        rows = x.shape[0] if self.noise == "sample" else 1
        f_in = scaled_noise((rows, x.shape[1]), x.device)
        f_out = scaled_noise((rows, self.weight.shape[0]), x.device)
        # per-row factorised noise without materialising a weight per row: (x * f_in) sigma^T * f_out
        return y + (F.linear(x * f_in, self.sigma_weight) + self.sigma_bias) * f_out


def set_noise(module: nn.Module, mode: str) -> None:
    """Set the noise mode (`sample`, `shared`, `off`) of every noisy layer in `module`."""
    for m in module.modules():
        if hasattr(m, "noise"):
            m.noise = mode


def dense_layer(in_dim: int, out_dim: int, noisy: bool = False) -> nn.Module:
    return NoisyLinear(in_dim, out_dim) if noisy else dense(in_dim, out_dim)


class ExpertMLPs(nn.Module):
    """`num_experts` independent MLPs in_dim -> hidden -> ReLU -> out_dim, run as one batched
    matmul. The second layer is the linear projection that keeps the token size (section 3).
    `noisy`: the first layer is a factorised noisy layer (official Rainbow experts), with one
    noise draw shared by all experts and slots of a sample, as in the official code."""

    def __init__(self, num_experts: int, in_dim: int, hidden: int, out_dim: int, noisy: bool = False):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, out_dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, out_dim))
        for w in (self.w1, self.w2):  # xavier per expert: fan_in, fan_out of one expert's kernel
            bound = math.sqrt(6.0 / (w.shape[1] + w.shape[2]))
            nn.init.uniform_(w, -bound, bound)
        if noisy:  # NoisyNetwork's initialiser for the first layer
            bound = 1.0 / math.sqrt(in_dim)
            nn.init.uniform_(self.w1, -bound, bound)
            nn.init.uniform_(self.b1, -bound, bound)
            self.sigma_w1 = nn.Parameter(torch.full((num_experts, in_dim, hidden), 0.1 * bound))
            self.sigma_b1 = nn.Parameter(torch.full((num_experts, hidden), 0.1 * bound))
            self.noise = "sample"
        self.noisy = noisy

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, E, slots, in_dim) -> outputs (B, E, slots, out_dim), hidden (B, E, slots, hidden)."""
        b, e, s, _ = x.shape
        flat = x.transpose(0, 1).reshape(e, b * s, -1)
        hidden = torch.baddbmm(self.b1.unsqueeze(1), flat, self.w1)
        if self.noisy and self.noise != "off":
            rows = b if self.noise == "sample" else 1
            f_in = scaled_noise((rows, 1, 1, x.shape[-1]), x.device)
            f_out = scaled_noise((rows, 1, 1, self.w1.shape[-1]), x.device)
            noisy_in = (x * f_in).transpose(0, 1).reshape(e, b * s, -1)
            noise = torch.baddbmm(self.sigma_b1.unsqueeze(1), noisy_in, self.sigma_w1).view(e, b, s, -1)
            hidden = hidden + (noise * f_out.transpose(0, 1)).reshape(e, b * s, -1)
        hidden = hidden.relu()
        out = torch.baddbmm(self.b2.unsqueeze(1), hidden, self.w2)
        return out.view(e, b, s, -1).transpose(0, 1), hidden.view(e, b, s, -1).transpose(0, 1)


def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / (x.norm(dim=dim, keepdim=True) + 1e-6)


class SoftRouter(nn.Module):
    """The routing logits of a Soft MoE, X Phi (section 2.2), with Phi of shape (d, E, p).
    Initialised like the official code: lecun_normal with fan_in = d * E (flax's rule for a
    rank-3 kernel). `random_phi`: Phi ~ N(0, 1) drawn afresh for every sample at every call.
    `normalize`: tokens and Phi columns l2-normalised over d, Phi times a learned scale (init 1)."""

    def __init__(self, token_dim: int, num_experts: int, slots: int, random_phi: bool = False, normalize: bool = False):
        super().__init__()
        self.shape = (token_dim, num_experts, slots)
        self.random_phi, self.normalize = random_phi, normalize
        self.phi = None if random_phi else nn.Parameter(lecun_normal_(torch.empty(self.shape), fan_in=token_dim * num_experts))
        self.scale = nn.Parameter(torch.ones(1)) if normalize else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, m, d) -> logits (B, m, E * p)."""
        b = x.shape[0]
        phi = torch.randn(b, *self.shape, device=x.device) if self.random_phi else self.phi.expand(b, *self.shape)
        phi = phi.reshape(b, self.shape[0], -1)
        if self.normalize:
            x = l2_normalize(x, dim=-1)
            phi = self.scale * l2_normalize(phi, dim=1)
        return torch.bmm(x, phi)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def soft_moe_weights(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch D: softmax over the tokens (dim 1) of each slot; combine C: softmax over all
    E * p slots (dim 2) of each token. Both (B, m, E * p). In float32 whatever the autocast
    (float64 stays float64)."""
    logits = at_least_float32(logits)
    return logits.softmax(dim=1), logits.softmax(dim=2)


class SoftMoE(nn.Module):
    """Soft MoE (Puigcerver et al. 2023) on tokens X (B, m, d): slot inputs X~ = D^T X, each
    expert processes its p slots, Y = C Y~. p = ceil(m * capacity_factor / E)."""

    def __init__(self, token_dim, num_tokens, num_experts, expert_hidden, capacity_factor=1.0, random_phi=False,
                 normalize=False, noisy=False):
        super().__init__()
        self.num_experts = num_experts
        self.slots = math.ceil(num_tokens * capacity_factor / num_experts)
        self.router = SoftRouter(token_dim, num_experts, self.slots, random_phi, normalize)
        self.experts = ExpertMLPs(num_experts, token_dim, expert_hidden, token_dim, noisy)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        dispatch, combine = soft_moe_weights(self.router(x))
        slots_in = torch.bmm(dispatch.transpose(1, 2).to(x.dtype), x)  # (B, E*p, d)
        out, hidden = self.experts(slots_in.view(x.shape[0], self.num_experts, self.slots, -1))
        y = torch.bmm(combine.to(out.dtype), out.reshape(x.shape[0], -1, out.shape[-1]))
        return y, {"hidden": hidden, "dispatch": dispatch, "combine": combine}


class Top1MoE(nn.Module):
    """Top-1 token-choice MoE (Fedus et al. 2022) as the official code runs it: router
    Dense(d -> E, no bias), softmax, each token goes to its best expert; an expert takes at most
    ceil(m * capacity_factor / E) tokens, in token order, and the overflow is dropped (output 0).
    The expert's output is scaled by the gate probability."""

    def __init__(self, token_dim, num_tokens, num_experts, expert_hidden, capacity_factor=1.0, router_noise=False,
                 noisy=False):
        super().__init__()
        self.num_experts = num_experts
        self.capacity = math.ceil(num_tokens * capacity_factor / num_experts)
        self.router = nn.Linear(token_dim, num_experts, bias=False)
        lecun_normal_(self.router.weight, fan_in=token_dim)
        self.router_noise = router_noise
        self.experts = ExpertMLPs(num_experts, token_dim, expert_hidden, token_dim, noisy)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = at_least_float32(self.router(x))  # (B, m, E)
        noisy = logits + torch.randn_like(logits) / self.num_experts if self.router_noise else logits
        probs = noisy.softmax(dim=-1)
        gate, choice = probs.max(dim=-1)  # (B, m)
        experts = torch.arange(self.num_experts, device=x.device)
        onehot = (choice.unsqueeze(-1) == experts).long()  # (B, m, E); F.one_hot would sync the host
        position = onehot.cumsum(dim=1) - 1  # place of each token in its expert's queue
        slot = position.unsqueeze(-1) == torch.arange(self.capacity, device=x.device)  # (B, m, E, C)
        dispatch = (slot & onehot.bool().unsqueeze(-1)).to(x.dtype)  # overflow tokens match no slot
        expert_in = torch.einsum("bmec,bmd->becd", dispatch, x)
        out, hidden = self.experts(expert_in)
        y = torch.einsum("bmec,becd->bmd", dispatch, out) * gate.unsqueeze(-1).to(out.dtype)
        kept = dispatch.sum(dim=(2, 3))  # (B, m): 1 where the token was processed
        return y, {"hidden": hidden, "logits": logits, "probs": probs, "choice": choice, "kept": kept}


def coefficient_of_variation_sq(v: torch.Tensor) -> torch.Tensor:
    """(std / mean)^2 over the last axis, population std, averaged over the batch."""
    return (v.std(dim=-1, unbiased=False) / (v.mean(dim=-1) + 1e-6)).pow(2).mean()


def importance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Importance loss (Riquelme et al. 2021, appendix A.2): CV^2 of the router probabilities
    summed over the tokens of a sample. probs (B, m, E)."""
    return coefficient_of_variation_sq(probs.sum(dim=1))


def load_loss(logits: torch.Tensor, noise_std: float) -> torch.Tensor:
    """Load loss (Riquelme et al. 2021, appendix A.2) for top-1 routing: with fresh noise of std
    `noise_std` on the logits, P[t, e] = 1 - Phi((threshold_t - logits[t, e]) / noise_std) is the
    smooth chance that expert e wins token t, the threshold being the best noisy logit of the
    token; the loss is the CV^2 of P averaged over tokens. logits (B, m, E)."""
    noisy = logits + torch.randn_like(logits) * noise_std
    threshold = noisy.max(dim=-1, keepdim=True).values
    p = 1.0 - torch.special.ndtr((threshold - logits) / noise_std)
    return coefficient_of_variation_sq(p.mean(dim=1))


class DenseBaseline(nn.Module):
    """The baseline's penultimate layer: flatten the tokens, Dense(width) + ReLU (noisy in the
    official Rainbow)."""

    def __init__(self, in_dim: int, width: int, noisy: bool = False):
        super().__init__()
        self.dense = dense_layer(in_dim, width, noisy)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        hidden = F.relu(self.dense(x.flatten(1)))
        return hidden, {"hidden": hidden}


class StageSoftMoE(nn.Module):
    """`all` variant (section 5.3): a Soft MoE around one layer (an encoder stage, a dense
    layer), whose experts are independent copies of the layer. PerSamp tokens: the layer's input
    is one token, so dispatch hands it whole to each expert's single slot and
    Y = sum_i C_i layer_i(x)."""

    def __init__(self, stages: list[nn.Module], in_shape: tuple[int, ...], random_phi=False, normalize=False):
        super().__init__()
        self.experts = nn.ModuleList(stages)
        self.router = SoftRouter(math.prod(in_shape), len(stages), 1, random_phi, normalize)

    def forward(self, x):
        _, combine = soft_moe_weights(self.router(x.flatten(1).unsqueeze(1)))  # (B, 1, E)
        outs = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, ...)
        weights = combine.view(*combine.shape[:1], -1, *([1] * (outs.dim() - 2)))
        return (weights.to(outs.dtype) * outs).sum(dim=1)


class BigSoftMoE(nn.Module):
    """`big` variant (section 5.3, official BigExpertModel): the Soft MoE routes the raw frames
    and each expert is a whole network: encoder -> Dense(hidden) -> ReLU -> Dense back to its
    slots. PerConv: 7056 pixel tokens of 4 values, p = floor(sqrt(ceil(m / E)))^2 slots per
    expert, which the expert sees as a sqrt(p) x sqrt(p) x 4 image. PerSamp: one token, the whole
    frame stack, which each expert sees as the 4 x 84 x 84 input."""

    def __init__(self, obs_shape, tokenizer, num_experts, expert_hidden, capacity_factor, make_stages, random_phi=False,
                 normalize=False, noisy=False):
        super().__init__()
        c, h, w = obs_shape
        num_tokens, token_dim = token_shape((c, h, w), tokenizer)
        if tokenizer == "conv":
            side = math.isqrt(math.ceil(num_tokens * capacity_factor / num_experts))
            self.slots, self.image = side * side, (c, side, side)
        else:  # samp: one slot holding the whole input
            self.slots, self.image = 1, (c, h, w)
        self.tokenizer, self.num_experts, self.token_dim = tokenizer, num_experts, token_dim
        self.router = SoftRouter(token_dim, num_experts, self.slots, random_phi, normalize)
        self.encoders = nn.ModuleList(nn.Sequential(*make_stages(c)) for _ in range(num_experts))
        with torch.no_grad():
            enc_dim = self.encoders[0](torch.zeros(1, *self.image)).numel()
        self.dense = ExpertMLPs(num_experts, enc_dim, expert_hidden, self.slots * token_dim, noisy)

    def slots_to_images(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, p, d) slot inputs of one expert -> (B, c, H, W) images, HWC order like `tokenize`."""
        c, h, w = self.image
        return slots.reshape(slots.shape[0], h, w, c).permute(0, 3, 1, 2)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x = tokenize(frames, self.tokenizer)
        dispatch, combine = soft_moe_weights(self.router(x))
        b = x.shape[0]
        slots_in = torch.bmm(dispatch.transpose(1, 2).to(x.dtype), x).view(b, self.num_experts, self.slots, -1)
        feats = torch.stack([enc(self.slots_to_images(slots_in[:, i])).flatten(1) for i, enc in enumerate(self.encoders)], 1)
        out, hidden = self.dense(feats.unsqueeze(2))  # one "slot" per expert: its whole network
        y = torch.bmm(combine.to(out.dtype), out.reshape(b, self.num_experts * self.slots, self.token_dim))
        return y, {"hidden": hidden, "dispatch": dispatch, "combine": combine}


class MoETorso(nn.Module):
    """Everything below the head (figure 2): encoder -> tokenizer -> MoE (or the dense baseline)
    -> flattened features. With a MoE there is no activation or extra layer after it: the head
    reads the flattened output tokens directly, as in the official code."""

    def __init__(self, obs_shape=(4, 84, 84), encoder="impala", impala_channels=(16, 32, 32), filter_size=3,
                 tokenizer="conv", moe="soft", num_experts=8, capacity_factor=1.0, expert_hidden=512,
                 expert_hidden_divisor=False, scale_hidden=False, random_phi=False, normalize=False,
                 moe_variant="regular", router_noise=False, noisy=False):
        super().__init__()
        hidden = expert_hidden // num_experts if expert_hidden_divisor else expert_hidden
        self.moe_kind, self.variant, self.tokenizer = moe, moe_variant, tokenizer

        def make_stages(in_ch=obs_shape[0]):
            return encoder_stages(encoder, in_ch, impala_channels, filter_size)

        if moe_variant == "big":
            self.encoder = nn.Identity()
            self.moe = BigSoftMoE(obs_shape, tokenizer, num_experts, hidden, capacity_factor, make_stages, random_phi,
                                  normalize, noisy)
            self.out_dim = math.prod(obs_shape)
            return
        stages = make_stages()
        if moe_variant == "all":
            copies = [make_stages() for _ in range(num_experts)]
            in_shapes, x = [], torch.zeros(1, *obs_shape)
            with torch.no_grad():
                for stage in stages:
                    in_shapes.append(tuple(x.shape[1:]))
                    x = stage(x)
            stages = [StageSoftMoE([c[i] for c in copies], in_shapes[i], random_phi, normalize) for i in range(len(stages))]
        self.encoder = nn.Sequential(*stages)
        with torch.no_grad():
            shape = tuple(self.encoder(torch.zeros(1, *obs_shape)).shape[1:])
        num_tokens, token_dim = token_shape(shape, tokenizer)
        if moe_variant == "all":  # the penultimate layer as one token, experts: copies of Dense + ReLU
            if tokenizer != "samp":
                raise ValueError("the `all` variant routes every layer as one token: use the samp tokenizer")
            copies = [nn.Sequential(nn.Flatten(), dense_layer(math.prod(shape), hidden, noisy), nn.ReLU())
                      for _ in range(num_experts)]
            self.moe, self.out_dim = StageSoftMoE(copies, shape, random_phi, normalize), hidden
        elif moe == "none":
            width = expert_hidden * num_experts if scale_hidden else expert_hidden
            self.moe, self.out_dim = DenseBaseline(num_tokens * token_dim, width, noisy), width
        elif moe == "soft":
            self.moe = SoftMoE(token_dim, num_tokens, num_experts, hidden, capacity_factor, random_phi, normalize, noisy)
            self.out_dim = num_tokens * token_dim
        else:
            self.moe = Top1MoE(token_dim, num_tokens, num_experts, hidden, capacity_factor, router_noise, noisy)
            self.out_dim = num_tokens * token_dim

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """uint8 frames (B, 4, 84, 84) -> features (B, out_dim), aux (hidden activations, routing)."""
        x = self.encoder(preprocess(obs))
        if self.variant == "all":
            y = self.moe(x)
            return y, {"hidden": y}
        if self.variant != "big":
            x = tokenize(x, self.tokenizer)
        y, aux = self.moe(x)
        return y.flatten(1), aux
# ---- end block: moe ----


# ---- block: replay ----
class FrameReplay:
    """Circular replay of single uint8 frames on the training device (Dopamine's layout): a
    frame is stored once, and the 4-frame stacks of a transition are rebuilt by index at
    sampling time, with the frames from before an episode's start set to zero (the agent's own
    stack starts from zeros too). Each row is one agent step: the newest frame of s_t, a_t, the
    clipped r_t and whether the episode terminated after it. When an episode ends, one more row
    holds its final frame (no action), so truncated episodes bootstrap from their true last
    state. n-step returns stop at episode ends, and at a terminated row whose successor starts
    the next episode directly (a lost life while the game goes on: `start_rows(starts=...)`).
    Rows are staged on the host and copied to the device in one transfer per field (`flush`);
    sampling has no host synchronisation.

    With K environments (`num_streams`), every vector step writes one row per environment, so
    row t*K + e is environment e's t-th row and an environment's next row is K rows on."""

    SAMPLE_TRIES = 4  # candidates per sample to skip final-frame rows (all 4 bad: ~(1/ep_len)^4)

    def __init__(self, capacity: int, frame_shape=(84, 84), stack: int = 4, n_step: int = 1, gamma: float = 0.99,
                 device="cpu", stage_rows: int = 64, num_streams: int = 1):
        capacity -= capacity % num_streams  # whole vector steps
        self.capacity, self.stack, self.n_step, self.gamma = capacity, stack, n_step, gamma
        self.streams = num_streams
        self.device = torch.device(device)
        dev = self.device
        self.frames = torch.zeros((capacity, *frame_shape), dtype=torch.uint8, device=dev)
        self.actions = torch.zeros(capacity, dtype=torch.long, device=dev)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=dev)
        self.terminated = torch.zeros(capacity, dtype=torch.bool, device=dev)
        self.final = torch.zeros(capacity, dtype=torch.bool, device=dev)  # row holds an episode's final frame
        self.ep_pos = torch.zeros(capacity, dtype=torch.int32, device=dev)  # index of the row in its episode
        self.fields = ("frames", "actions", "rewards", "terminated", "final", "ep_pos")
        # host staging, pinned so the copy to the GPU is asynchronous; written through numpy views
        pin = dev.type == "cuda"
        stage_rows = max(stage_rows, num_streams) // num_streams * num_streams
        self.staged = {f: torch.zeros((stage_rows, *getattr(self, f).shape[1:]), dtype=getattr(self, f).dtype,
                                      pin_memory=pin) for f in self.fields}
        self.staged_np = {f: t.numpy() for f, t in self.staged.items()}
        self.num_staged, self.added = 0, 0  # rows staged on the host; rows written to the device
        self.episode_step = np.zeros(num_streams, dtype=np.int64)  # rows so far in each stream's episode
        self.copy_done = torch.cuda.Event() if pin else None
        self.outcome = {f: torch.zeros(num_streams, dtype=getattr(self, f).dtype, pin_memory=pin)
                        for f in ("actions", "rewards", "terminated")}
        self.outcome_np = {f: t.numpy() for f, t in self.outcome.items()}
        self.outcome_done = torch.cuda.Event() if pin else None
        self.open_row, self.open_final = 0, np.zeros(num_streams, dtype=bool)
        self.bounds = torch.zeros(2, dtype=torch.long, device=dev)  # [lo, hi] of sampleable row ids

    @property
    def rows(self) -> int:
        """Rows ever added (staged ones included)."""
        return self.added + self.num_staged

    def add_rows(self, frames, actions, rewards, terminated, final) -> None:
        """One vector step: a row per stream, (K, H, W) frames and (K,) arrays. A `final` row
        holds the frame its stream's episode ended on (its action and reward are not used), and
        that stream's next row starts an episode."""
        self.start_rows(frames, final)
        self.finish_rows(actions, rewards, terminated)

    def start_rows(self, frames, final, starts=None) -> None:
        """`add_rows` in two halves: the rows' frames before the step's actions are chosen, then
        their actions, rewards and terminations (`finish_rows`). No transition that can be
        sampled in between reads those three fields (the newest one ends n rows back), so the
        updates of this step may be queued behind the action's forward pass and run while the
        emulators step, and still see exactly what they would after `add_rows`. `starts` marks
        streams whose row starts an episode right after a terminated row, with no final row
        between (a lost life: the game goes on)."""
        k = self.streams
        if self.num_staged + k > len(self.staged["frames"]):
            self.flush()
        if self.copy_done is not None and self.num_staged == 0:
            self.copy_done.synchronize()  # the last copy out of the staging area is over
        rows, st = slice(self.num_staged, self.num_staged + k), self.staged_np
        final = np.asarray(final, dtype=bool)
        if starts is not None:
            self.episode_step[np.asarray(starts, dtype=bool)] = 0
        st["frames"][rows] = frames
        st["actions"][rows], st["rewards"][rows], st["terminated"][rows] = 0, 0.0, False
        st["final"][rows] = final
        st["ep_pos"][rows] = self.episode_step
        self.episode_step += 1
        self.episode_step[final] = 0
        self.open_row, self.open_final = self.rows, final  # the first of the rows waiting for their outcome
        self.num_staged += k

    def finish_rows(self, actions, rewards, terminated) -> None:
        """The actions, rewards and terminations of the rows `start_rows` began (final rows keep 0)."""
        k, keep = self.streams, ~self.open_final
        values = {"actions": np.where(keep, actions, 0), "rewards": np.where(keep, rewards, 0.0),
                  "terminated": np.asarray(terminated, dtype=bool) & keep}
        at = self.open_row - self.added
        if at >= 0:  # still staged
            for field, v in values.items():
                self.staged_np[field][at:at + k] = v
            return
        if self.outcome_done is not None:  # flushed by an update in between: write the fields on the device
            self.outcome_done.synchronize()  # the last such copy has left the host buffer
        start = self.open_row % self.capacity  # a multiple of K: the K rows do not wrap
        for field, v in values.items():
            self.outcome_np[field][:] = v
            getattr(self, field)[start:start + k].copy_(self.outcome[field], non_blocking=True)
        if self.outcome_done is not None:
            self.outcome_done.record()

    def add(self, frame, action: int, reward: float, terminated: bool) -> None:
        """One agent step of a single stream, taken from a state whose newest frame is `frame`."""
        self.add_rows(frame[None], [action], [reward], [terminated], [False])

    def add_final(self, frame) -> None:
        """The frame a single stream's episode ended on (after its last step)."""
        self.add_rows(frame[None], [0], [0.0], [False], [True])

    def flush(self) -> None:
        """Copy the staged rows to the device and update the sampling bounds."""
        k = self.num_staged
        if k == 0:
            return
        for f in self.fields:  # straight into the rows: one copy per field (two at the wrap), no kernel
            rows, staged = getattr(self, f), self.staged[f]
            for into, take in self._ring_slices(k):
                rows[into].copy_(staged[take], non_blocking=True)
        if self.copy_done is not None:
            self.copy_done.record()
        self.added += k
        self.num_staged = 0
        self._set_bounds()

    def _ring_slices(self, k: int) -> list[tuple[slice, slice]]:
        """(buffer rows, staged rows) pairs that write the next k rows: one pair, or two where the
        ring wraps; of more than `capacity` rows only the newest are written."""
        skip = max(0, k - self.capacity)
        start, n = (self.added + skip) % self.capacity, k - skip
        first = min(n, self.capacity - start)
        pairs = [(slice(start, start + first), slice(skip, skip + first))]
        if first < n:
            pairs.append((slice(0, n - first), slice(skip + first, k)))
        return pairs

    def _row_bounds(self) -> tuple[int, int]:
        """A row starts a transition when its n successors are written and no frame of its stack
        has been overwritten."""
        k = self.streams
        return max(0, self.added - self.capacity + (self.stack - 1) * k), self.added - 1 - self.n_step * k

    def _set_bounds(self) -> None:
        lo, hi = self._row_bounds()
        self.bounds[0].fill_(lo)  # fill_ with a Python number: no copy, no synchronisation
        self.bounds[1].fill_(max(hi, lo))

    def can_sample(self) -> bool:
        lo, hi = self._row_bounds()
        return hi >= lo

    def sample_rows(self, batch_size: int) -> torch.Tensor:
        """Row ids (B,), uniform over the rows that start a transition."""
        lo, hi, k = self.bounds[0], self.bounds[1], self.streams
        u = torch.rand(batch_size, self.SAMPLE_TRIES, device=self.device, dtype=torch.float64)  # float32: 2^24 levels, uneven over 1M rows
        cand = lo + (u * (hi - lo + 1).to(u.dtype)).long().clamp_max(hi - lo)
        ok = ~self.final[cand % self.capacity]
        first_ok = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
        rows = cand.gather(1, first_ok).squeeze(1)
        # all candidates final (~(1/episode length)^4): the stream's row before a final row is a step
        return torch.where(ok.any(dim=1), rows, torch.where(rows - k >= lo, rows - k, rows + k))

    def stack_at(self, rows: torch.Tensor) -> torch.Tensor:
        """The frame stacks (B, stack, H, W) whose newest frame is row `rows` (oldest first)."""
        back = torch.arange(self.stack - 1, -1, -1, device=self.device)  # 3, 2, 1, 0
        src = rows.unsqueeze(1) - back * self.streams  # (B, stack)
        same_episode = self.ep_pos[rows % self.capacity].unsqueeze(1) >= back
        frames = self.frames[src % self.capacity]
        return frames * same_episode.view(*same_episode.shape, 1, 1).to(frames.dtype)

    def gather(self, rows: torch.Tensor) -> dict:
        """Transitions starting at `rows`: obs, action, n-step return, discount, next_obs.
        `discount` is gamma^k for the k rewards summed, 0 when the episode terminated."""
        n, cap, k_rows = self.n_step, self.capacity, self.streams
        ahead = torch.arange(n, device=self.device)
        later = rows.unsqueeze(1) + ahead * k_rows  # the stream's rows t .. t+n-1
        # the episode ends after row t+j: row t+j+1 is a final frame, or row t+j terminated (the
        # next row of a lost life's stream starts the next episode without a final frame)
        ends = self.final[(later + k_rows) % cap] | self.terminated[later % cap]
        used = torch.cat([torch.ones_like(ends[:, :1]), (~ends[:, :-1]).cumprod(dim=1).bool()], dim=1)
        discounts = self.gamma ** ahead.to(torch.float32)
        ret = (self.rewards[later % cap] * discounts * used).sum(dim=1)
        k = used.sum(dim=1)  # rewards summed
        done = self.terminated[(rows + (k - 1) * k_rows) % cap]
        return {
            "obs": self.stack_at(rows),
            "action": self.actions[rows % cap],
            "return": ret,
            "discount": (self.gamma ** k.to(torch.float32)) * (~done).to(torch.float32),
            "next_obs": self.stack_at(rows + k * k_rows),
            "rows": rows,
        }

    def sample(self, batch_size: int) -> dict:
        return self.gather(self.sample_rows(batch_size))

    def state_dict(self) -> dict:
        self.flush()
        n = min(self.added, self.capacity)
        state = {f: getattr(self, f)[:n].cpu() for f in self.fields}
        state.update(added=self.added, episode_step=self.episode_step.copy(), capacity=self.capacity,
                     streams=self.streams)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            fail(f"the checkpoint's replay holds {state['capacity']} transitions, not {self.capacity}: pass the run's --buffer-size")
        if state.get("streams", 1) != self.streams:
            fail(f"the checkpoint's replay has {state.get('streams', 1)} environment streams, not {self.streams}: pass the run's --num-envs")
        n = len(state["frames"])
        for f in self.fields:
            getattr(self, f)[:n].copy_(state[f])
        self.num_staged, self.added = 0, state["added"]
        self.episode_step = np.broadcast_to(np.asarray(state["episode_step"], dtype=np.int64), (self.streams,)).copy()
        self._set_bounds()
# ---- end block: replay ----


# ---- block: prioritized_replay ----
class PrioritizedFrameReplay(FrameReplay):
    """Proportional prioritised replay (Schaul et al. 2016) as Dopamine's Rainbow runs it: a
    transition is drawn with probability proportional to its priority, new ones enter with the
    largest priority seen so far, an update sets the priorities of its batch to
    sqrt(loss + 1e-10) (exponent 0.5 on the loss), and the importance weights are
    1 / sqrt(priority) over their batch maximum (exponent 0.5). On the device: one cumulative sum
    over the buffer and a binary search per sample, stratified into batch_size equal segments
    like Dopamine's sum tree; rows that cannot start a transition weigh 0. No host sync."""

    def __init__(self, capacity: int, frame_shape=(84, 84), stack: int = 4, n_step: int = 1, gamma: float = 0.99,
                 device="cpu", stage_rows: int = 64, num_streams: int = 1):
        super().__init__(capacity, frame_shape, stack, n_step, gamma, device, stage_rows, num_streams)
        self.priorities = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)
        self.max_priority = torch.ones((), dtype=torch.float32, device=self.device)
        self.positions = torch.arange(self.capacity, device=self.device)

    def flush(self) -> None:
        written = self._ring_slices(self.num_staged) if self.num_staged else []
        super().flush()
        for into, _ in written:  # new rows enter with the largest priority seen so far
            self.priorities[into] = self.max_priority

    def row_of_position(self, pos: torch.Tensor) -> torch.Tensor:
        """The row id stored at buffer position `pos` (the newest row written there)."""
        newest = self.bounds[1] + self.n_step * self.streams  # = rows written - 1 once sampling is possible
        return newest - (newest - pos) % self.capacity

    def sample_rows(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ids (B,) drawn proportionally to priority, and their priorities."""
        rows_here = self.row_of_position(self.positions)
        valid = (rows_here >= self.bounds[0]) & (rows_here <= self.bounds[1]) & ~self.final
        weights = self.priorities * valid
        cdf = weights.double().cumsum(0)
        u = (torch.arange(batch_size, device=self.device) + torch.rand(batch_size, device=self.device, dtype=torch.float64))
        mass = (u / batch_size).clamp_max(1 - 1e-12) * cdf[-1]  # strictly below the total: lands on a valid row
        pos = torch.searchsorted(cdf, mass, right=True)
        return rows_here[pos], weights[pos]

    def sample(self, batch_size: int) -> dict:
        rows, priority = self.sample_rows(batch_size)
        batch = self.gather(rows)
        weights = 1.0 / torch.sqrt(priority + 1e-10)
        batch["weights"] = weights / weights.max()
        return batch

    def update_priorities(self, rows: torch.Tensor, priorities: torch.Tensor) -> None:
        self.priorities[rows % self.capacity] = priorities
        torch.maximum(self.max_priority, priorities.max(), out=self.max_priority)

    def state_dict(self) -> dict:
        state = super().state_dict()
        n = min(self.added, self.capacity)
        state.update(priorities=self.priorities[:n].cpu(), max_priority=self.max_priority.cpu())
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.priorities[: len(state["priorities"])].copy_(state["priorities"])
        self.max_priority.copy_(state["max_priority"])
# ---- end block: prioritized_replay ----


# ---- block: metrics ----
@torch.no_grad()
def dormant_official(hidden: torch.Tensor) -> float:
    """The official code's dormant percentage (Sokar et al. score with tau = 0): per unit, the
    mean |activation| over the batch (and, for experts, over all experts and slots, as the code
    of the paper's time did), normalised by the sum over units; % of units whose score is 0."""
    s = hidden.abs().reshape(hidden.shape[0], -1, hidden.shape[-1]).mean(dim=(0, 1))
    s = s / (s.sum() + 1e-9)
    return 100.0 * (s <= 0.0).float().mean().item()


@torch.no_grad()
def dormant_fraction(hidden: torch.Tensor, tau: float) -> float:
    """Sokar et al. (2023): unit i is dormant when E|h_i| / mean_j E|h_j| <= tau, the
    expectations over the batch (and slots); every expert's units count separately.
    hidden: (B, H) for a dense layer, (B, E, slots, H) for experts."""
    score = hidden.abs().mean(dim=0) if hidden.dim() == 2 else hidden.abs().mean(dim=(0, 2))
    score = score / (score.mean() + 1e-9)
    return (score <= tau).float().mean().item()


@torch.no_grad()
def srank(features: torch.Tensor, delta: float = 0.01) -> int:
    """Effective rank of Kumar et al. (2021): the fewest singular values of the (B, F) feature
    matrix whose sum reaches (1 - delta) of the total."""
    sv = torch.linalg.svdvals(features.double())
    cum = sv.cumsum(0) / sv.sum().clamp_min(1e-12)
    return int((cum < 1 - delta).sum().item()) + 1


@torch.no_grad()
def srank_official(features: torch.Tensor, threshold: float = 0.01) -> int:
    """The official code's 'srank': the number of singular values above threshold * the largest."""
    sv = torch.linalg.svdvals(features.double())
    return int((sv / sv.max().clamp_min(1e-12) > threshold).sum().item())


@torch.no_grad()
def expert_usage(aux: dict, num_experts: int) -> dict:
    """Per-expert load and routing entropy. Soft MoE: the combine weight each expert gets (summed
    over its slots, averaged over tokens and batch; sums to 1) and the entropies of the combine
    (over slots) and dispatch (over tokens) distributions, normalised to [0, 1]. Top1: the share
    of tokens each expert receives, the share dropped for capacity, the router entropy."""
    out = {}
    if "combine" in aux:
        combine, dispatch = aux["combine"], aux["dispatch"]
        load = combine.reshape(*combine.shape[:2], num_experts, -1).sum(-1).mean(dim=(0, 1))
        ent_c = -(combine * combine.clamp_min(1e-12).log()).sum(-1).mean() / math.log(max(combine.shape[-1], 2))
        ent_d = -(dispatch * dispatch.clamp_min(1e-12).log()).sum(1).mean() / math.log(max(dispatch.shape[1], 2))
        out.update(combine_entropy=ent_c.item(), dispatch_entropy=ent_d.item())
    elif "choice" in aux:
        load = F.one_hot(aux["choice"], num_experts).float().mean(dim=(0, 1))
        probs = aux["probs"]
        ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean() / math.log(max(num_experts, 2))
        out.update(router_entropy=ent.item(), dropped_tokens=1.0 - aux["kept"].mean().item())
    else:
        return out
    out.update({f"expert_load/{i}": v for i, v in enumerate(load.tolist())})
    return out


@torch.no_grad()
def representation_metrics(features: torch.Tensor, aux: dict, num_experts: int, tau: float) -> dict:
    """The analysis metrics of figure 10 on one batch, official definitions and the usual ones.
    features: what the head reads (flattened MoE output; the baseline's post-ReLU layer)."""
    hidden = aux["hidden"]
    return {
        "dormant_official_pct": dormant_official(hidden),
        "dormant_fraction": dormant_fraction(hidden, tau),
        "feature_norm": features.norm(dim=1).mean().item(),
        "feature_var_norm_official": features.var(dim=0, unbiased=False).norm().item(),
        "srank": srank(features),
        "srank_official": srank_official(features),
        **expert_usage(aux, num_experts),
    }
# ---- end block: metrics ----


# ---- block: logging ----
class RunLogger:
    """TensorBoard always, wandb with --track (it mirrors TensorBoard; WANDB_MODE=offline works
    without network), and `summary.jsonl` in the run folder: one JSON record per iteration and a
    final one, which benchmark/aggregate.py reads. On resume, records and TensorBoard events past
    the checkpoint are dropped so the resumed run reads as one."""

    def __init__(self, run_dir: str, args, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        config = dataclasses.asdict(args)
        self.wandb = None
        if args.track:
            import wandb

            self.wandb = wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, config=config,
                                    name=os.path.basename(run_dir), dir=run_dir, sync_tensorboard=True,
                                    save_code=True, resume="allow", id=os.path.basename(run_dir)[-64:])
        self.writer = SummaryWriter(run_dir, purge_step=resume_step if resume_step else None)
        if not resume_step:
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in config.items()))
        self.summary_path = os.path.join(run_dir, "summary.jsonl")
        self._truncate_summary(resume_step)

    def _truncate_summary(self, step: int) -> None:
        if not os.path.exists(self.summary_path):
            return
        with open(self.summary_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        with open(self.summary_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records if r["step"] <= step and not r.get("final"))

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        for k, v in values.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def record(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.summary_path, "a") as f:
            f.write(json.dumps(clean) + "\n")

    def close(self) -> None:
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def run_provenance(device: torch.device) -> dict:
    """What made a run, kept in its config.json: this file's SHA-256 (the whole agent is this one
    file), its git commit and whether the file differs from it, the versions, the device, the host
    and the command line."""
    path = os.path.abspath(__file__)
    with open(path, "rb") as f:
        code_sha256 = hashlib.sha256(f.read()).hexdigest()

    def git(*cmd: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", *cmd], cwd=os.path.dirname(path), capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--", os.path.basename(path)) if commit else None
    return {"code_sha256": code_sha256, "git_commit": commit,
            "code_differs_from_commit": None if changes is None else bool(changes),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "host": socket.gethostname(), "argv": sys.argv}
# ---- end block: logging ----


# ---- block: checkpoint ----
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed over
    the old checkpoint, so a kill at any moment leaves either the old or the new one whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    if not os.path.exists(path):
        fail(f"no checkpoint at {path}: --resume takes a run folder that holds checkpoint.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling error means the file is unusable
        fail(f"the checkpoint {path} is corrupt or unreadable ({type(e).__name__}); start a new run or restore a copy")


# Flags that may differ between a run and its resumption; every other one must match.
RESUMABLE_FLAGS = {"resume", "total_frames", "checkpoint_every", "track", "wandb_project_name", "wandb_entity",
                   "capture_video", "device", "cudagraphs", "compile", "triton_convs", "tf32", "log_every", "runs_dir",
                   "exp_name", "emulator_process", "save_model", "eval_threads"}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, capturable: bool) -> None:
    """Load an optimiser saved with or without CUDA graphs into one that runs with `capturable`
    (load_state_dict would keep the saved setting): step counters live on the parameters'
    device when captured, on the CPU otherwise."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(p.device if capturable else "cpu", torch.float32)


def check_resume_flags(saved: dict, args) -> None:
    for key, value in dataclasses.asdict(args).items():
        if key in RESUMABLE_FLAGS or key not in saved:
            continue
        old = saved[key]
        if (list(old) if isinstance(old, (list, tuple)) else old) != (list(value) if isinstance(value, (list, tuple)) else value):
            flag = "--" + key.replace("_", "-")
            fail(f"the run to resume was started with {flag} {old}, not {value}: pass the run's own flags to --resume")
# ---- end block: checkpoint ----


# ---- block: speed ----
def configure_backends(device, deterministic: bool, triton_convs: bool = False, tf32: bool = True) -> None:
    """Deterministic cudnn kernels, or let cudnn time its kernels and keep the fastest (a few %
    faster on the GPU); TF32 matrix units for float32 matmuls and convolutions on the GPU, or
    full float32 without `tf32`; the Triton 3x3 convolutions (conv_kernels block, TF32 products)
    where asked for and available, and only with `tf32`. On the GPU, one host thread for torch:
    its thread pool would only split the loop's small copies, and its idle threads spin and take
    the cores that the emulators' threads need (benchmark/RESULTS.md, seventh pass)."""
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    CONV_KERNELS["on"] = triton_convs and tf32 and triton_convs_available(device)
    CONV_KERNELS["on_cpu"] = torch.device(device).type == "cpu"  # the interpreter; on CUDA, CPU tensors keep cuDNN
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_num_threads(1)


def memory_format(device) -> torch.memory_format:
    """Channels-last convolutions are faster on the GPU (benchmark/RESULTS.md); same maths."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.preserve_format


class PendingActions:
    """The greedy actions' copy to the host, queued on the device right behind the forward pass
    that computes them. Work queued after it (the step's updates) does not delay `fetch`, which
    waits for this copy alone: the GPU goes from acting to learning with no wait for the host."""

    def __init__(self, num_envs: int, device):
        cuda = torch.device(device).type == "cuda"
        self.host = torch.zeros(num_envs, dtype=torch.long, pin_memory=cuda)
        self.copied = torch.cuda.Event() if cuda else None

    def start(self, actions: torch.Tensor) -> None:
        self.host.copy_(actions, non_blocking=True)
        if self.copied is not None:
            self.copied.record()

    def fetch(self) -> np.ndarray:
        if self.copied is not None:
            self.copied.synchronize()
        return self.host.numpy().copy()


class SideStream:
    """Runs two independent pieces of work side by side: `first` on a second CUDA stream, forked
    from the current one, and `second` on the current stream, which waits for both before it
    goes on (inside a CUDA graph too). On the CPU, one after the other. Every fork starts after
    all the work queued before it, so memory the side stream frees is never reused early."""

    def __init__(self, device):
        self.stream = torch.cuda.Stream(device) if torch.device(device).type == "cuda" else None

    def beside(self, first, second) -> tuple:
        if self.stream is None:
            return first(), second()
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            a = first()
        b = second()
        main.wait_stream(self.stream)
        return a, b


class CapturedStep:
    """Runs `fn()` (no arguments: it reads tensors that stay in place and returns tensors) as a
    CUDA graph: the first `warmup` calls run eagerly on a side stream (they are real steps), the
    next one captures the graph, and every call from then on replays it. The returned tensors
    are overwritten by the next call. Without `enabled` it simply calls `fn`."""

    def __init__(self, fn, enabled: bool, warmup: int = 3):
        self.fn, self.enabled, self.warmup = fn, enabled, warmup
        self.calls, self.graph, self.out = 0, None, None

    def __call__(self):
        if not self.enabled:
            return self.fn()
        if self.calls < self.warmup:
            self.calls += 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                out = self.fn()
            torch.cuda.current_stream().wait_stream(stream)
            return out
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn()
        self.graph.replay()
        return self.out
# ---- end block: speed ----


# ---- block: conv_kernels ----
# The Impala encoder's 3x3 stride-1 'SAME' convolutions, with the ReLU before them fused in, and
# its 3x3 stride-2 max-pool, as Triton kernels on CUDA: at batch 32 and 16-32 channels cuDNN's
# kernels are far from what the memory allows, and these take a DQN update from 1.75 to 1.05 ms
# (benchmark/RESULTS.md, fifth and sixth passes). Same arithmetic as cuDNN's with TF32 (TF32
# products, float32 sums), in a fixed order: the sums are deterministic. Tensors are
# channels-last, so a pixel's channels sit side by side: an implicit matrix product over M = N*H*W
# pixels and K = 9 taps x C input channels. Without Triton, or on the CPU, nn.Conv2d and
# F.max_pool2d run.
try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

CONV_KERNELS = {"on": False, "on_cpu": False}  # set by configure_backends(..., triton_convs=True)
CONV_BLOCK_M, CONV_WARPS = 64, 4  # forward and data gradient: pixels per program (block sizes: H200 probes)
WGRAD_BLOCK_M, WGRAD_PROGRAMS, WGRAD_WARPS = 64, 264, 4  # weight gradient: pixels per step, programs sharing the pixels
WGRAD_K_SPLIT, WGRAD_STAGES = 1, 2  # programs sharing the 9 taps of a slice of pixels; software pipelining
WGRAD_SUM_BLOCK, WGRAD_SUM_COLUMNS = 256, 16  # final sum: partial sums added per step, columns per program
POOL_BLOCK = 1024  # max-pool: outputs (forward) or inputs (backward) per program


def triton_convs_available(device) -> bool:
    """On CUDA GPUs of compute capability 8.0 or newer (A100, RTX 30xx and later: TF32, and the
    shared memory the weight gradient takes), or on the CPU under Triton's interpreter
    (TRITON_INTERPRET=1, for the tests). Older GPUs keep cuDNN."""
    if triton is None:
        return False
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return os.environ.get("TRITON_INTERPRET") == "1"


def conv_kernel_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """3x3, stride 1, float32, at most 32 channels (wider layers are cuDNN's: it was faster there),
    and int32 offsets."""
    return (CONV_KERNELS["on"] and (x.is_cuda or CONV_KERNELS["on_cpu"]) and x.dtype == torch.float32
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and max(conv.in_channels, conv.out_channels) <= 32
            and x.shape[0] * max(conv.in_channels, conv.out_channels) * x.shape[2] * x.shape[3] < 2**31)


def pool_kernel_applies(x: torch.Tensor, kernel: int, stride: int) -> bool:
    """The Impala encoder's 3x3 stride-2 'SAME' max-pool, float32, where the convolutions' kernels run."""
    return (CONV_KERNELS["on"] and (x.is_cuda or CONV_KERNELS["on_cpu"]) and x.dtype == torch.float32
            and (kernel, stride) == (3, 2) and x.numel() < 2**31)


if triton is not None:

    @triton.jit
    def _pixel_tile(x_ptr, offs_m, offs_k, M, H, W, CIN: tl.constexpr, RELU: tl.constexpr):
        """x (relu(x) with RELU) at the pixels offs_m shifted by the taps of offs_k (tap-major,
        then channel): the (BLOCK_M, BLOCK_K) tile of the implicit im2col matrix, zero outside
        the image ('SAME')."""
        col = offs_m % W
        row = (offs_m // W) % H
        img = offs_m // (W * H)
        tap = offs_k // CIN
        hh = row[:, None] + (tap // 3 - 1)[None, :]
        ww = col[:, None] + (tap % 3 - 1)[None, :]
        ok = (offs_m < M)[:, None] & (offs_k < 9 * CIN)[None, :] & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        tile = tl.load(x_ptr + ((img[:, None] * H + hh) * W + ww) * CIN + (offs_k % CIN)[None, :], mask=ok, other=0.0)
        if RELU:
            tile = tl.where((tile > 0) | (tile != tile), tile, 0.0)  # F.relu: NaN stays NaN
        return tile

    @triton.jit
    def _conv3x3_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, H, W, CIN: tl.constexpr, COUT: tl.constexpr,
                        COUT_PAD: tl.constexpr, S_O: tl.constexpr, S_C: tl.constexpr, S_H: tl.constexpr,
                        S_W: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, RELU_IN: tl.constexpr,
                        MASK_OUT: tl.constexpr, mask_ptr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        """y[m, o] = b[o] + sum over taps t and channels c of x[m + shift(t), c] w[o, c, t], with
        relu(x) for RELU_IN. With FLIP (taps mirrored, the caller swapping w's o and c strides) it
        is the data gradient; MASK_OUT then zeroes y where mask <= 0 (the gradient through the
        ReLU that RELU_IN applied in the forward pass)."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_o = tl.arange(0, COUT_PAD)
        acc = tl.zeros((BLOCK_M, COUT_PAD), dtype=tl.float32)
        for k0 in tl.static_range(0, 9 * CIN, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            tap = offs_k // CIN
            kh = tap // 3
            kw = tap % 3
            if FLIP:
                kh = 2 - kh
                kw = 2 - kw
            w_offs = offs_o[None, :] * S_O + ((offs_k % CIN) * S_C + kh * S_H + kw * S_W)[:, None]
            wt = tl.load(w_ptr + w_offs, mask=(offs_k < 9 * CIN)[:, None] & (offs_o < COUT)[None, :], other=0.0)
            acc += tl.dot(_pixel_tile(x_ptr, offs_m, offs_k, M, H, W, CIN, RELU_IN), wt)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_o, mask=offs_o < COUT, other=0.0)[None, :]
        out = offs_m[:, None] * COUT + offs_o[None, :]
        in_y = (offs_m < M)[:, None] & (offs_o < COUT)[None, :]
        if MASK_OUT:
            acc = tl.where(tl.load(mask_ptr + out, mask=in_y, other=0.0) > 0, acc, 0.0)
        tl.store(y_ptr + out, acc, mask=in_y)

    @triton.jit
    def _conv3x3_wgrad_kernel(x_ptr, dy_ptr, part_ptr, M, H, W, CIN: tl.constexpr, COUT: tl.constexpr,
                              COUT_PAD: tl.constexpr, BLOCK_K: tl.constexpr, CHUNKS: tl.constexpr,
                              STEPS: tl.constexpr, BLOCK_M: tl.constexpr, RELU_IN: tl.constexpr):
        """Program (p, s) sums dy[m, o] x[m + shift(t), c] (relu(x) for RELU_IN) over its STEPS x
        BLOCK_M pixels for the rows k = (t, c) of K chunks s*CHUNKS .. (s+1)*CHUNKS-1, one
        accumulator per chunk (dy is read once for them all; the shifted x tiles overlap in the
        cache), and (s = 0) dy[m, o] for the bias. Its partial sums go to row p: (o, k) at
        o * 9 CIN + k, the bias after them."""
        offs_o = tl.arange(0, COUT_PAD)
        k_first = tl.program_id(1) * CHUNKS * BLOCK_K
        offs_kc = tl.arange(0, BLOCK_K)
        accs = (tl.zeros((COUT_PAD, BLOCK_K), dtype=tl.float32),) * CHUNKS
        bias_acc = tl.zeros((COUT_PAD,), dtype=tl.float32)
        for step in range(STEPS):
            offs_m = (tl.program_id(0) * STEPS + step) * BLOCK_M + tl.arange(0, BLOCK_M)
            dyt = tl.load(dy_ptr + offs_m[:, None] * COUT + offs_o[None, :],
                          mask=(offs_m < M)[:, None] & (offs_o < COUT)[None, :], other=0.0)
            dy_t = tl.trans(dyt)
            summed = ()
            for chunk in tl.static_range(CHUNKS):
                x_tile = _pixel_tile(x_ptr, offs_m, k_first + chunk * BLOCK_K + offs_kc, M, H, W, CIN, RELU_IN)
                summed = summed + (accs[chunk] + tl.dot(dy_t, x_tile),)
            accs = summed
            bias_acc += tl.sum(dyt, axis=0)
        row = part_ptr + tl.program_id(0) * (COUT * 9 * CIN + COUT)
        for chunk in tl.static_range(CHUNKS):
            offs_k = k_first + chunk * BLOCK_K + offs_kc
            tl.store(row + offs_o[:, None] * (9 * CIN) + offs_k[None, :], accs[chunk],
                     mask=(offs_o < COUT)[:, None] & (offs_k < 9 * CIN)[None, :])
        if tl.program_id(1) == 0:
            tl.store(row + COUT * 9 * CIN + offs_o, bias_acc, mask=offs_o < COUT)

    @triton.jit
    def _conv3x3_wgrad_sum_kernel(part_ptr, dw_ptr, db_ptr, P: tl.constexpr, CIN: tl.constexpr, COUT: tl.constexpr,
                                  S_O: tl.constexpr, S_C: tl.constexpr, S_H: tl.constexpr, S_W: tl.constexpr,
                                  BLOCK_P: tl.constexpr, BLOCK_F: tl.constexpr):
        """Columns f of the P programs' partial sums, added in program order: f = (o, t, c) goes
        to dw[o, c, t] in dw's own layout, the last COUT columns to the bias gradient."""
        F: tl.constexpr = COUT * 9 * CIN + COUT
        offs_f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
        acc = tl.zeros((BLOCK_F,), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            acc += tl.sum(tl.load(part_ptr + offs_p[:, None] * F + offs_f[None, :],
                                  mask=(offs_p < P)[:, None] & (offs_f < F)[None, :], other=0.0), axis=0)
        o, k = offs_f // (9 * CIN), offs_f % (9 * CIN)
        tap, c = k // CIN, k % CIN
        is_w = offs_f < COUT * 9 * CIN
        tl.store(dw_ptr + o * S_O + c * S_C + (tap // 3) * S_H + (tap % 3) * S_W, acc, mask=is_w)
        tl.store(db_ptr + (offs_f - COUT * 9 * CIN), acc, mask=~is_w & (offs_f < F))

    @triton.jit
    def _max_pool_kernel(x_ptr, y_ptr, arg_ptr, TOTAL, H, W, OH, OW, PAD_H: tl.constexpr, PAD_W: tl.constexpr,
                         C: tl.constexpr, BLOCK: tl.constexpr):
        """y[n, i, j, c] = max of x over the 3x3 window at (2i - PAD_H, 2j - PAD_W), outside the
        image -inf ('SAME'); arg = the window position of the first maximum in row-major order (as
        PyTorch picks it: a later value wins only if greater, or NaN)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # channels-last: (n, i, j, c)
        c = offs % C
        j = (offs // C) % OW
        i = (offs // (C * OW)) % OH
        n = offs // (C * OW * OH)
        best = tl.full((BLOCK,), float("-inf"), tl.float32)
        arg = tl.zeros((BLOCK,), dtype=tl.int32)
        for tap in tl.static_range(9):
            h = 2 * i - PAD_H + tap // 3
            w = 2 * j - PAD_W + tap % 3
            ok = (offs < TOTAL) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            v = tl.load(x_ptr + ((n * H + h) * W + w) * C + c, mask=ok, other=float("-inf"))
            take = (v > best) | (v != v)
            best = tl.where(take, v, best)
            arg = tl.where(take, tap, arg)
        tl.store(y_ptr + offs, best, mask=offs < TOTAL)
        tl.store(arg_ptr + offs, arg.to(tl.int8), mask=offs < TOTAL)

    @triton.jit
    def _max_pool_backward_kernel(dy_ptr, arg_ptr, dx_ptr, TOTAL, H, W, OH, OW, PAD_H: tl.constexpr,
                                  PAD_W: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
        """dx[n, h, w, c]: the sum of dy over the (at most 2x2) windows whose maximum was x[n, h, w, c],
        gathered in a fixed order (deterministic, no atomics)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # channels-last: (n, h, w, c)
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for window in tl.static_range(4):  # output rows (h + PAD_H) // 2 - 1 + window // 2, likewise columns
            i = (h + PAD_H) // 2 - 1 + window // 2
            j = (w + PAD_W) // 2 - 1 + window % 2
            dh = h + PAD_H - 2 * i
            dw = w + PAD_W - 2 * j
            ok = (offs < TOTAL) & (i >= 0) & (i < OH) & (j >= 0) & (j < OW) & (dh <= 2) & (dw <= 2)
            at = ((n * OH + i) * OW + j) * C + c
            hit = ok & (tl.load(arg_ptr + at, mask=ok, other=-1).to(tl.int32) == dh * 3 + dw)
            acc += tl.load(dy_ptr + at, mask=hit, other=0.0)
        tl.store(dx_ptr + offs, acc, mask=offs < TOTAL)


def _conv_sizes(cin: int, cout: int) -> tuple[int, int]:
    """K chunk (one tap of 16/32 channels, else 16 columns across taps) and COUT padded to a power
    of two >= 16 (what tl.dot takes)."""
    return (cin if cin in (16, 32) else 16), max(16, 1 << (cout - 1).bit_length())


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _conv3x3(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], relu_input: bool = False,
             data_grad: bool = False, relu_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The convolution of x (relu(x) with relu_input) by w (O, C, 3, 3); with data_grad, x is dy
    and the result dx, zero where relu_mask <= 0 if given."""
    x = _channels_last(x)
    mask = x if relu_mask is None else _channels_last(relu_mask)
    n, cin, h, width = x.shape
    s_o, s_c, s_h, s_w = w.stride()
    if data_grad:
        s_o, s_c = s_c, s_o
    cout = w.shape[1] if data_grad else w.shape[0]
    y = torch.empty((n, cout, h, width), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    block_k, cout_pad = _conv_sizes(cin, cout)
    m = n * h * width
    _conv3x3_kernel[(triton.cdiv(m, CONV_BLOCK_M),)](
        x, w, w if b is None else b, y, m, h, width, CIN=cin, COUT=cout, COUT_PAD=cout_pad, S_O=s_o, S_C=s_c,
        S_H=s_h, S_W=s_w, FLIP=data_grad, HAS_BIAS=b is not None, RELU_IN=relu_input, MASK_OUT=relu_mask is not None,
        mask_ptr=mask, BLOCK_M=CONV_BLOCK_M, BLOCK_K=block_k, num_warps=CONV_WARPS, num_stages=2)
    return y


def _conv3x3_weight_grad(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor,
                         relu_input: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """dw (laid out like w) and db of the convolution of x (relu(x) with relu_input): partial sums
    over WGRAD_PROGRAMS slices of the pixels, then their sum, both in a fixed order."""
    x, dy = _channels_last(x), _channels_last(dy)
    n, cin, h, width = x.shape
    cout = dy.shape[1]
    block_k, cout_pad = _conv_sizes(cin, cout)
    m = n * h * width
    blocks = triton.cdiv(m, WGRAD_BLOCK_M)
    steps = triton.cdiv(blocks, WGRAD_PROGRAMS)
    programs = triton.cdiv(blocks, steps)
    columns = cout * 9 * cin + cout
    chunks = triton.cdiv(triton.cdiv(9 * cin, block_k), WGRAD_K_SPLIT)  # K chunks per program
    part = torch.empty((programs, columns), device=x.device, dtype=torch.float32)
    _conv3x3_wgrad_kernel[(programs, triton.cdiv(9 * cin, chunks * block_k))](
        x, dy, part, m, h, width, CIN=cin, COUT=cout, COUT_PAD=cout_pad, BLOCK_K=block_k, CHUNKS=chunks,
        STEPS=steps, BLOCK_M=WGRAD_BLOCK_M, RELU_IN=relu_input, num_warps=WGRAD_WARPS, num_stages=WGRAD_STAGES)
    dw, db = torch.empty_like(w), torch.empty((cout,), device=x.device, dtype=torch.float32)
    _conv3x3_wgrad_sum_kernel[(triton.cdiv(columns, WGRAD_SUM_COLUMNS),)](
        part, dw, db, P=programs, CIN=cin, COUT=cout, S_O=dw.stride(0), S_C=dw.stride(1), S_H=dw.stride(2),
        S_W=dw.stride(3), BLOCK_P=WGRAD_SUM_BLOCK, BLOCK_F=WGRAD_SUM_COLUMNS, num_warps=4)
    return dw, db


# torch.compile sees the kernels as two opaque operators with their shapes (register_fake) and
# their gradient (register_autograd); the name is per module, so that two agent files can share a process
_OPS = "moe_rl_" + __name__.replace(".", "_")


@torch.library.custom_op(f"{_OPS}::conv3x3", mutates_args=())
def conv3x3_same(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu_input: bool = False) -> torch.Tensor:
    """F.conv2d(x, w, b, padding=1) for 3x3 w (of F.relu(x) with relu_input), channels-last output."""
    return _conv3x3(x, w, b, relu_input)


@conv3x3_same.register_fake
def _(x, w, b, relu_input=False):
    return x.new_empty((x.shape[0], w.shape[0], *x.shape[2:])).contiguous(memory_format=torch.channels_last)


@torch.library.custom_op(f"{_OPS}::conv3x3_backward", mutates_args=())
def conv3x3_backward(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, need_dx: bool,
                     relu_input: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx = _conv3x3(dy, w, None, data_grad=True, relu_mask=x if relu_input else None) if need_dx else x.new_empty(0)
    return (dx, *_conv3x3_weight_grad(x, dy, w, relu_input))


@conv3x3_backward.register_fake
def _(x, w, dy, need_dx, relu_input):
    dx = x.new_empty(x.shape).contiguous(memory_format=torch.channels_last) if need_dx else x.new_empty(0)
    return dx, torch.empty_like(w), w.new_empty(w.shape[0])


def _conv3x3_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.relu_input = inputs[3]


def _conv3x3_grad(ctx, dy):
    x, w = ctx.saved_tensors
    dx, dw, db = conv3x3_backward(x, w, dy, ctx.needs_input_grad[0], ctx.relu_input)
    return (dx if ctx.needs_input_grad[0] else None), dw, db, None


conv3x3_same.register_autograd(_conv3x3_grad, setup_context=_conv3x3_setup)


@torch.library.custom_op(f"{_OPS}::max_pool3x3", mutates_args=())
def max_pool3x3_same(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """F.max_pool2d(x, 3, 2) with 'SAME' padding (-inf), channels-last: the output and, per output,
    the window position (0..8, int8) of its maximum."""
    x = _channels_last(x)
    n, c, h, w = x.shape
    (pad_h, _), (pad_w, _) = same_padding(h, 3, 2), same_padding(w, 3, 2)
    y = torch.empty((n, c, -(-h // 2), -(-w // 2)), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    arg = torch.empty(y.shape, device=x.device, dtype=torch.int8, memory_format=torch.channels_last)
    _max_pool_kernel[(triton.cdiv(y.numel(), POOL_BLOCK),)](x, y, arg, y.numel(), h, w, y.shape[2], y.shape[3],
                                                           PAD_H=pad_h, PAD_W=pad_w, C=c, BLOCK=POOL_BLOCK)
    return y, arg


@max_pool3x3_same.register_fake
def _(x):
    shape = (x.shape[0], x.shape[1], -(-x.shape[2] // 2), -(-x.shape[3] // 2))
    y = x.new_empty(shape).contiguous(memory_format=torch.channels_last)
    return y, torch.empty_like(y, dtype=torch.int8)


@torch.library.custom_op(f"{_OPS}::max_pool3x3_backward", mutates_args=())
def max_pool3x3_backward(dy: torch.Tensor, arg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dy = _channels_last(dy)
    n, c, oh, ow = dy.shape
    (pad_h, _), (pad_w, _) = same_padding(h, 3, 2), same_padding(w, 3, 2)
    dx = torch.empty((n, c, h, w), device=dy.device, dtype=dy.dtype, memory_format=torch.channels_last)
    _max_pool_backward_kernel[(triton.cdiv(dx.numel(), POOL_BLOCK),)](dy, arg, dx, dx.numel(), h, w, oh, ow,
                                                                     PAD_H=pad_h, PAD_W=pad_w, C=c, BLOCK=POOL_BLOCK)
    return dx


@max_pool3x3_backward.register_fake
def _(dy, arg, h, w):
    return dy.new_empty((dy.shape[0], dy.shape[1], h, w)).contiguous(memory_format=torch.channels_last)


def _max_pool_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.size = inputs[0].shape[2:]


def _max_pool_grad(ctx, dy, _):
    (arg,) = ctx.saved_tensors
    return max_pool3x3_backward(dy, arg, *ctx.size)


max_pool3x3_same.register_autograd(_max_pool_grad, setup_context=_max_pool_setup)
# ---- end block: conv_kernels ----


# ============================================================================================
# Data augmentation (DrQ)
# ============================================================================================
# ---- block: augmentation ----
def drq_augment(obs: torch.Tensor, pad: int = 4, intensity_scale: float = 0.05,
                shift_per: str = "sample") -> torch.Tensor:
    """DrQ's augmentation as the official Atari 100k agent applies it (Yarats et al. 2021): each
    sample is padded by `pad` pixels repeating its edge and cropped back at a random offset (the
    same for every frame of its stack; offsets 0..2*pad-1 in the padded image, as the official
    `randint` whose upper bound is exclusive), then multiplied by 1 + 0.05 * clip(N(0, 1), -2, 2),
    one factor per sample. uint8 (B, C, H, W) -> float frames, scaled as `preprocess` scales them.
    `shift_per="batch"` draws one offset for the whole batch instead, as the official code did
    until February 2022 (Dopamine commit 1bb064b): the code of the published DrQ(eps) runs."""
    b, c, h, w = obs.shape
    dev = obs.device
    draws = b if shift_per == "sample" else 1
    offsets = (torch.randint(0, 2 * pad, (draws, 2), device=dev) - pad).expand(b, 2)  # crop shift, -pad .. pad-1
    rows = (torch.arange(h, device=dev) + offsets[:, :1]).clamp(0, h - 1)  # edge padding = clamped index
    cols = (torch.arange(w, device=dev) + offsets[:, 1:]).clamp(0, w - 1)
    shifted = obs[torch.arange(b, device=dev).view(b, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                  rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
    intensity = 1.0 + intensity_scale * torch.randn(b, 1, 1, 1, device=dev).clamp(-2.0, 2.0)
    return preprocess(shifted) * intensity
# ---- end block: augmentation ----


# ============================================================================================
# The agent: Q-network, loss, update
# ============================================================================================
# ---- block: rainbow_agent ----
class RainbowNetwork(nn.Module):
    """MoETorso -> dueling, noisy C51 head (official FullRainbowMoENetwork): advantage
    Dense(A * atoms) and value Dense(atoms) read the flattened MoE output directly;
    logits = value + advantage - mean_a advantage, per atom. Q = sum_z z softmax(logits)."""

    def __init__(self, args: Args, num_actions: int):
        super().__init__()
        self.torso = MoETorso(
            encoder=args.encoder, impala_channels=args.impala_channels, filter_size=args.filter_size,
            tokenizer=args.tokenizer, moe=args.moe, num_experts=args.num_experts,
            capacity_factor=args.capacity_factor, expert_hidden=args.expert_hidden,
            expert_hidden_divisor=args.expert_hidden_divisor, scale_hidden=args.scale_hidden,
            random_phi=args.random_phi, normalize=args.normalize, moe_variant=args.moe_variant,
            router_noise=args.router_noise, noisy=args.noisy)
        self.num_actions, self.num_atoms, self.dueling = int(num_actions), args.num_atoms, args.dueling
        width = self.torso.out_dim
        self.advantage = dense_layer(width, num_actions * args.num_atoms, args.noisy)
        self.value = dense_layer(width, args.num_atoms, args.noisy) if args.dueling else None
        self.register_buffer("support", torch.linspace(-args.v_max, args.v_max, args.num_atoms) if args.num_atoms > 1
                             else torch.ones(1))

    def forward(self, obs: torch.Tensor, with_aux: bool = False):
        """uint8 frames -> Q (B, A), logits (B, A, atoms) [, features, aux]."""
        features, aux = self.torso(obs)
        logits = self.advantage(features).view(-1, self.num_actions, self.num_atoms)
        if self.dueling:
            logits = self.value(features).unsqueeze(1) + logits - logits.mean(dim=1, keepdim=True)
        q = (logits.softmax(dim=-1) * self.support).sum(-1) if self.num_atoms > 1 else logits.squeeze(-1)
        return (q, logits, features, aux) if with_aux else (q, logits)


def linearly_decaying_epsilon(step: int, warmup: int, decay: int, final: float) -> float:
    """Dopamine's schedule: 1 during the first `warmup` steps, then linear down to `final`."""
    return final + min(max((1.0 - final) * (decay + warmup - step) / decay, 0.0), 1.0 - final)


def project_distribution(target_support: torch.Tensor, probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """C51 projection (Bellemare et al. 2017, Dopamine's project_distribution): the mass
    probs[b, j] sitting at target_support[b, j] (clipped into [z_0, z_K-1]) is shared between the
    two nearest atoms z_i in proportion 1 - |target - z_i| / delta_z. (B, K) -> (B, K)."""
    delta_z = support[1] - support[0]
    clipped = target_support.clamp(support[0], support[-1]).unsqueeze(1)  # (B, 1, K): source atoms j
    share = (1.0 - (clipped - support.view(1, -1, 1)).abs() / delta_z).clamp(0.0, 1.0)  # (B, K_i, K_j)
    return (share * probs.unsqueeze(1)).sum(dim=2)


def rainbow_targets(args: Args, q_net: RainbowNetwork, target_net: RainbowNetwork, batch: dict) -> torch.Tensor:
    """The target of every transition: the projected distribution of R + gamma^n Z(s', a*)
    (C51), or the scalar R + gamma^n Q(s', a*); a* from the online network with --double, from
    the target network otherwise. One noise draw for the whole batch, as the official target.
    A target network synced at every update (DrQ(eps)) is the online network itself: the same
    weights and the same noise draw, so the double-DQN pass would repeat this one."""
    with torch.no_grad():
        set_noise(target_net, "shared")
        q_next, logits_next = target_net(batch["next_obs"])
        set_noise(target_net, "sample")
        if args.double and q_net is not target_net:
            set_noise(q_net, "shared")
            q_next = q_net(batch["next_obs"])[0]
            set_noise(q_net, "sample")
        best = q_next.argmax(dim=1)
        logits_best = logits_next[torch.arange(len(best), device=best.device), best]  # (B, atoms)
        if args.num_atoms == 1:
            return batch["return"] + batch["discount"] * logits_best.squeeze(-1)
        support = target_net.support
        target_support = batch["return"].unsqueeze(1) + batch["discount"].unsqueeze(1) * support
        return project_distribution(target_support, logits_best.softmax(dim=-1), support)


def online_logits(args: Args, q_net: RainbowNetwork, batch: dict) -> tuple[torch.Tensor, Optional[dict]]:
    """The online network's logits on the states, and the router's outputs where the Top1
    auxiliary losses are weighted (None otherwise)."""
    if args.moe == "top1" and (args.importance_loss_weight > 0 or args.load_loss_weight > 0):
        _, logits, _, aux = q_net(batch["obs"], with_aux=True)
        return logits, aux
    return q_net(batch["obs"])[1], None


def rainbow_loss(args: Args, online: tuple[torch.Tensor, Optional[dict]], batch: dict, targets: torch.Tensor):
    """Per-transition loss: cross-entropy between the projected target and the predicted
    distribution of the action taken (C51), or Huber on scalar Q (`online_logits`). Weighted by
    the importance weights; the Top1 auxiliary losses are added when weighted. Returns (loss to
    minimise, per-transition loss)."""
    logits, aux = online
    chosen = logits[torch.arange(len(logits), device=logits.device), batch["action"]]  # (B, atoms)
    if args.num_atoms == 1:
        per_sample = F.smooth_l1_loss(chosen.squeeze(-1), targets, reduction="none")
    else:
        per_sample = -(targets * chosen.log_softmax(dim=-1)).sum(dim=-1)
    total = (batch["weights"] * per_sample).mean() if "weights" in batch else per_sample.mean()
    if aux is not None:
        if args.importance_loss_weight > 0:
            total = total + args.importance_loss_weight * importance_loss(aux["probs"])
        if args.load_loss_weight > 0:
            total = total + args.load_loss_weight * load_loss(aux["logits"], 1.0 / args.num_experts)
    return total, per_sample


def make_update_step(args: Args, q_net, target_net, optimizer, replay: FrameReplay, augment=None) -> CapturedStep:
    """One gradient update: prioritised (or uniform) sampling on the device, targets, loss,
    backward, Adam, new priorities. `augment` (DrQ) transforms the states and the next states,
    each with its own draw. No host synchronisation; returns the mean loss (a tensor). The
    targets (the target network's pass and the double-DQN pass on the next states) and the
    online network's pass on the states are independent until the loss: on the GPU they run side
    by side on two streams (`SideStream`), compiled piece by piece."""
    compiled = torch.compile if args.compile else (lambda fn: fn)

    def sample_batch() -> dict:
        batch = replay.sample(args.batch_size)
        if augment is not None:
            batch["obs"], batch["next_obs"] = augment(batch["obs"]), augment(batch["next_obs"])
        return batch

    sample = compiled(sample_batch)
    targets_of = compiled(lambda batch: rainbow_targets(args, q_net, target_net, batch))
    forward = compiled(lambda batch: online_logits(args, q_net, batch))
    loss_of = compiled(lambda online, batch, targets: rainbow_loss(args, online, batch, targets))
    adam_step = compiled(optimizer.step)
    reprioritise = compiled(lambda rows, per_sample: replay.update_priorities(rows, torch.sqrt(per_sample + 1e-10)))
    side = SideStream(replay.device)

    def update():
        batch = sample()
        targets, online = side.beside(lambda: targets_of(batch), lambda: forward(batch))
        total, per_sample = loss_of(online, batch, targets)
        optimizer.zero_grad()  # set to None: backward writes the gradients, no zero fill and add (benchmark/RESULTS.md)
        total.backward()
        adam_step()
        per_sample = per_sample.detach()
        if args.prioritized:
            reprioritise(batch["rows"], per_sample)
        return per_sample.mean()

    return CapturedStep(update, args.cudagraphs)


def make_act_step(args: Args, q_net, act_input: torch.Tensor) -> CapturedStep:
    """The greedy actions for the frame stacks held in `act_input` (K, 4, 84, 84), noise on."""

    @torch.no_grad()
    def greedy_action():
        return q_net(act_input)[0].argmax(dim=1)

    return CapturedStep(torch.compile(greedy_action) if args.compile else greedy_action, args.cudagraphs)


def validate_args(args: Args) -> None:
    """Reject flag combinations that cannot work, with one line that says what to do."""
    if args.num_atoms < 1:
        fail(f"--num-atoms must be at least 1 (got {args.num_atoms})")
    if args.num_atoms > 1 and args.v_max <= 0:
        fail(f"--v-max must be positive (got {args.v_max})")
    if args.num_experts < 1:
        fail(f"--num-experts must be at least 1 (got {args.num_experts})")
    if args.expert_hidden_divisor and args.expert_hidden // args.num_experts < 1:
        fail(f"--expert-hidden-divisor: {args.expert_hidden} // {args.num_experts} experts leaves no hidden unit")
    if args.capacity_factor <= 0:
        fail(f"--capacity-factor must be positive (got {args.capacity_factor})")
    if args.encoder != "impala" and args.filter_size != 3:
        fail("--filter-size applies to the Impala encoder only; drop it or use --encoder impala")
    if args.moe_variant != "regular" and args.moe != "soft":
        fail(f"--moe-variant {args.moe_variant} is a Soft MoE variant (section 5.3): use --moe soft")
    if args.moe_variant == "all" and args.tokenizer != "samp":
        fail("--moe-variant all routes every layer as one token (PerSamp, section 5.3): add --tokenizer samp")
    if args.moe_variant == "big" and args.tokenizer == "feat":
        fail("--moe-variant big routes raw frames with --tokenizer conv (pixels, official) or samp (paper); feat cannot form expert images")
    if args.scale_hidden and args.moe != "none":
        fail("--scale-hidden widens the baseline's dense layer: use it with --moe none")
    if (args.random_phi or args.normalize) and args.moe != "soft":
        fail("--random-phi and --normalize change the Soft MoE router: use them with --moe soft")
    if (args.router_noise or args.importance_loss_weight or args.load_loss_weight) and args.moe != "top1":
        fail("--router-noise and the auxiliary loss weights belong to the Top1 router: use them with --moe top1")
    if args.replay_ratio is not None:
        rr = args.replay_ratio
        if rr <= 0 or (rr < 1 and abs(1 / rr - round(1 / rr)) > 1e-9) or (rr >= 1 and abs(rr - round(rr)) > 1e-9):
            fail(f"--replay-ratio must be 1/k or k for a whole k (got {rr}), e.g. 0.25, 0.5, 1, 2")
    for name in ("update_period", "target_update_period", "batch_size", "n_step", "iteration_steps", "buffer_size"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.buffer_size < args.batch_size + args.n_step + 8:
        fail(f"--buffer-size {args.buffer_size} is too small for --batch-size {args.batch_size}")
    if args.rom_file is not None and not os.path.isfile(args.rom_file):
        fail(f"--rom-file {args.rom_file}: no such file; pass the path of the game's ROM (a .bin file)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {args.device}: no CUDA device is visible; use --device cpu")
    if args.cudagraphs and not (args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())):
        fail("--cudagraphs needs a CUDA device")


def updates_schedule(args: Args) -> tuple[int, int]:
    """(period, updates per period): --replay-ratio r gives one update every 1/r steps (r < 1)
    or r updates every step; otherwise one update every --update-period steps."""
    if args.replay_ratio is None:
        return args.update_period, 1
    if args.replay_ratio < 1:
        return round(1 / args.replay_ratio), 1
    return 1, round(args.replay_ratio)

# ---- end block: rainbow_agent ----


# ============================================================================================
# The Atari 100k protocol: training, evaluation
# ============================================================================================
# ---- block: atari100k_loop ----
LONG_SCHEDULE = dict(total_steps=12_500_000, eval_every=250_000)  # figures 12 and 16: 50M frames


def validate_atari100k_args(args: Args) -> None:
    """The protocol's flags, on top of the agent's (`validate_args`)."""
    if args.total_steps < 1:
        fail("--total-steps must be at least 1")
    for name in ("eval_every", "eval_episodes", "eval_threads", "max_noops"):
        if getattr(args, name) < 0:
            fail(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(args, name)})")
    if not 0.0 <= args.eval_epsilon <= 1.0:
        fail(f"--eval-epsilon must lie in [0, 1] (got {args.eval_epsilon})")
    if args.num_envs < 1:
        fail(f"--num-envs must be at least 1 (got {args.num_envs})")
    if args.num_envs > 1 and args.capture_video:
        fail("--capture-video records one environment: use it with --num-envs 1")
    if args.num_envs > 1 and args.emulator_process:
        fail("--emulator-process moves the one environment's emulator: with --num-envs above 1 they already step in "
             "ale-py's threads")
    if args.life_loss_frame_skip != "full" and not args.terminal_on_life_loss:
        fail(f"--life-loss-frame-skip {args.life_loss_frame_skip} is Dopamine's rule under terminal_on_life_loss: "
             "use it with --terminal-on-life-loss")
    if args.life_loss_frame_skip != "full" and args.num_envs > 1:
        fail(f"--life-loss-frame-skip {args.life_loss_frame_skip} stops a step in the one environment's emulator: "
             "use it with --num-envs 1 (ale-py's vector env plays four frames)")
    if args.noop_unit == "frame" and args.num_envs > 1:
        fail("--noop-unit frame takes the no-ops in the one environment's emulator: use it with --num-envs 1")
    if args.shift_per != "sample" and not args.data_augmentation:
        fail(f"--shift-per {args.shift_per} sets DrQ's augmentation: use it with --data-augmentation")
    if args.eval_model is not None:
        if not os.path.isfile(args.eval_model):
            fail(f"--eval-model {args.eval_model}: no such file; pass a run's model.pt (--save-model) or checkpoint.pt")
        if args.resume or not args.eval_episodes:
            fail("--eval-model evaluates a trained network: use it without --resume and with --eval-episodes above 0")


def load_model(path: str, env_id: str, args, q_net: nn.Module) -> int:
    """Load a saved network (model.pt or checkpoint.pt) into `q_net` for --eval-model and return
    the agent steps it was trained for. The game must be the model's; a network of other flags
    fails with the flags that differ."""
    saved = load_checkpoint(path)
    if "q_net" not in saved or "args" not in saved:
        fail(f"--eval-model {path} holds no network: pass a run's model.pt (--save-model) or checkpoint.pt")
    trained_on = resolve_env_id(saved["args"]["env_id"])
    if trained_on != env_id:
        fail(f"--eval-model {path} was trained on {trained_on}: pass --env-id {trained_on}")
    try:
        q_net.load_state_dict(saved["q_net"])
    except RuntimeError:
        differ = sorted(k for k, v in saved["args"].items() if hasattr(args, k) and k not in RESUMABLE_FLAGS
                        and k != "eval_model" and getattr(args, k) != (tuple(v) if isinstance(v, list) else v))
        fail(f"--eval-model {path} holds a network of other flags: pass the flags it was trained with "
             f"(these differ from its run's: {', '.join('--' + k.replace('_', '-') for k in differ[:8]) or 'none'})")
    return int(saved["step"]) if "step" in saved else int(saved["loop"]["step"])


def crossed(previous: int, step: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (previous, step]: with K environments the step count
    advances by up to K at once."""
    return every > 0 and step // every > previous // every


def set_eval_noise(q_net: nn.Module, expert_noise: bool) -> None:
    """Evaluation: the noisy heads run on their means (the official `eval_mode`); the official
    experts never receive `eval_mode`, so their noise stays on unless `expert_noise` is False."""
    set_noise(q_net, "off")
    if expert_noise:
        for m in q_net.modules():
            if isinstance(m, ExpertMLPs) and m.noisy:
                m.noise = "sample"


def evaluation_threads(args: Args, num_envs: int) -> int:
    """--eval-threads, or one emulator thread per core this process may use, up to `num_envs`. Not
    OMP_NUM_THREADS's share of a machine that several runs share: an evaluation is emulation alone,
    up to 100 x 27,000 agent steps when strong agents play to the frame limit (11 minutes on one
    free thread, over 20 on a busy machine), and its threads take the cores that the runs beside it
    leave idle; they wait without spinning (benchmark/RESULTS.md, "The evaluation's cost")."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(num_envs, args.eval_threads or cores)


class EmulatorGroups:
    """`num_envs` `make_env` environments spread over `num_processes` child processes, with the
    calls and arrays of ale-py's vector env that `evaluate` uses (`reset`, `step`, `close`): for
    the frame skip cut at a lost life (`DopamineFrameSkip`), which ale-py's cannot play. An
    environment whose episode ended is not stepped again: its last frame and lives come back, with
    no reward. `noop_frames` > 0: each reset takes 0..noop_frames-1 NOOP emulator frames, drawn from
    the reset's seed, after which the observation is still the game's first screen, as in training."""

    def __init__(self, env_id: str, num_envs: int, sticky_actions: bool, max_episode_frames: int,
                 num_processes: int, life_loss: str, noop_frames: int = 0):
        self.num_envs, self.noop_frames = num_envs, noop_frames
        env_args = (env_id, 0, sticky_actions, max_episode_frames, None, life_loss)
        self.groups = [g.tolist() for g in np.array_split(np.arange(num_envs), min(num_processes, num_envs))]
        self.workers = [start_emulator_process([env_args] * len(g)) for g in self.groups]
        self.frames = np.zeros((num_envs, 1, 84, 84), dtype=np.uint8)
        self.lives, self.ended = np.zeros(num_envs, dtype=np.int64), np.zeros(num_envs, dtype=bool)

    def call(self, command: str, args: dict) -> dict:
        """`command` in the environments of `args` ({env: arg}), all processes at once: {env: result}."""
        for (conn, _), group in zip(self.workers, self.groups):
            conn.send((command, {i: args[e] for i, e in enumerate(group) if e in args}))
        results = {}
        for (conn, _), group in zip(self.workers, self.groups):
            results.update({group[i]: result for i, result in conn.recv().items()})
        return results

    def reset(self, seed: int):
        rng = np.random.default_rng(seed)
        seeds = {e: int(s) for e, s in enumerate(rng.integers(2**31, size=self.num_envs))}
        noops = rng.integers(self.noop_frames, size=self.num_envs) if self.noop_frames > 0 else np.zeros(self.num_envs, int)
        for e, (obs, lives) in self.call("reset", seeds).items():
            self.frames[e, 0], self.lives[e] = obs, lives
        after_noops = self.call("noop_frames", {e: int(k) for e, k in enumerate(noops) if k > 0})
        for e, (lives, _) in after_noops.items():
            self.lives[e] = lives
        restart = {e: seeds[e] for e, (_, game_over) in after_noops.items() if game_over}  # then without no-ops
        for e, (obs, lives) in self.call("reset", restart).items():
            self.frames[e, 0], self.lives[e] = obs, lives
        self.ended[:] = False
        return self.frames.copy(), {"lives": self.lives.copy()}

    def step(self, actions: np.ndarray):
        reward, terminated, truncated = np.zeros(self.num_envs), np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool)
        active = {e: int(actions[e]) for e in np.flatnonzero(~self.ended).tolist()}
        for e, (obs, r, term, trunc, lives) in self.call("step", active).items():
            self.frames[e, 0], reward[e], terminated[e], truncated[e], self.lives[e] = obs, r, term, trunc, lives
        self.ended |= terminated | truncated
        return self.frames.copy(), reward, terminated, truncated, {"lives": self.lives.copy()}

    def close(self) -> None:
        for conn, process in self.workers:
            conn.send(("close", None))
        for conn, process in self.workers:
            process.join(timeout=30)


def evaluation_envs(args: Args, env_id: str, n: int):
    """The evaluation's n environments: ale-py's vector env, or `EmulatorGroups` for a frame skip
    cut at a lost life (--life-loss-frame-skip cut or cut_2021), one process per thread it would take."""
    noop_frames = args.max_noops if args.noop_unit == "frame" else 0  # taken at reset
    if args.life_loss_frame_skip == "full":
        return make_vector_env(env_id, n, args.sticky_actions, args.max_episode_frames, evaluation_threads(args, n),
                               noop_frames=noop_frames)
    return EmulatorGroups(env_id, n, args.sticky_actions, args.max_episode_frames, evaluation_threads(args, n),
                          args.life_loss_frame_skip, noop_frames=noop_frames)


def greedy_choice(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The greedy actions of Q-values (B, A), their Q-values, and their lead over the next best
    action's (where the leads are small everywhere, one action can win in every state)."""
    best_two = q.float().topk(2, dim=1).values
    return q.argmax(dim=1), best_two[:, 0], best_two[:, 0] - best_two[:, 1]


def evaluate(args: Args, env_id: str, eval_step: CapturedStep, eval_input: torch.Tensor, num_actions: int,
             rng: np.random.Generator) -> dict:
    """`args.eval_episodes` episodes at once, one per environment of `evaluation_envs`, with
    epsilon `args.eval_epsilon`, random no-op starts (agent steps, or emulator frames taken at
    reset: by ale-py, whose last screen is then the first observation, or by `EmulatorGroups`, whose
    first observation stays the game's first screen), and a fresh frame stack after a
    lost life when --terminal-on-life-loss. An episode ends at game over or after --max-episode-frames.
    `eval_step` returns `greedy_choice` of the network's Q-values. Returns the evaluation's record:
    the unclipped returns, the episodes' lengths in agent steps (no-ops not counted), the vector
    steps taken (every environment is stepped until the longest episode ends), how often the
    network chose each action over those agent steps, explored or not (a policy stuck on one
    action shows there), and the median over them of the greedy action's Q-value and of its lead
    over the next best action."""
    n, in_frames = args.eval_episodes, args.noop_unit == "frame"
    envs = evaluation_envs(args, env_id, n)
    obs, info = envs.reset(seed=int(rng.integers(2**31)))
    stacks = np.zeros((n, 4, 84, 84), dtype=np.uint8)
    stacks[:, -1] = obs[:, -1]
    noops = rng.integers(args.max_noops, size=n) if args.max_noops > 0 and not in_frames else np.zeros(n, dtype=np.int64)
    lives, returns, done = info["lives"].copy(), np.zeros(n), np.zeros(n, dtype=bool)
    lengths, vector_steps = np.zeros(n, dtype=np.int64), 0
    greedy_counts, best_q, margins = np.zeros(num_actions, dtype=np.int64), [], []
    while not done.all():
        eval_input.copy_(torch.from_numpy(stacks))
        greedy, best, margin = (t.cpu().numpy() for t in eval_step())
        random_actions = rng.integers(num_actions, size=n)
        actions = np.where(rng.random(n) < args.eval_epsilon, random_actions, greedy)
        in_noops = noops > 0
        actions[in_noops] = 0
        obs, reward, terminated, truncated, info = envs.step(actions)
        playing = ~(done | in_noops)  # the agent steps of the episodes, their no-ops left out
        returns += np.where(playing, reward, 0.0)
        lengths += playing
        greedy_counts += np.bincount(greedy[playing], minlength=num_actions)
        margins.append(margin[playing])
        best_q.append(best[playing])
        vector_steps += 1
        stacks[:, :-1] = stacks[:, 1:]
        stacks[:, -1] = obs[:, -1]
        new_stack = in_noops | (args.terminal_on_life_loss & (info["lives"] < lives))
        stacks[new_stack, :-1] = 0
        lives, noops = info["lives"].copy(), np.maximum(noops - 1, 0)
        done |= terminated | truncated
    envs.close()
    return {"eval_returns": returns.tolist(), "eval_lengths": lengths.tolist(), "eval_vector_steps": vector_steps,
            "eval_greedy_counts": greedy_counts.tolist(), "eval_greedy_q_median": median_of(best_q),
            "eval_q_margin_median": median_of(margins)}


def median_of(parts: list[np.ndarray]) -> float:
    """The median of all the values in `parts`; NaN where there are none."""
    values = np.concatenate(parts) if parts else np.zeros(0)
    return float(np.median(values)) if len(values) else float("nan")


def main(args: Args) -> str:
    if args.long_schedule:
        args = dataclasses.replace(args, **LONG_SCHEDULE)
    validate_args(args)
    validate_atari100k_args(args)
    env_id = resolve_env_id(args.env_id)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    configure_backends(device, args.torch_deterministic, args.triton_convs, args.tf32)

    game = env_id.split("/")[-1].split("-")[0]
    checkpoint = None
    if args.resume:
        run_dir = args.resume.rstrip("/")
        checkpoint = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
        check_resume_flags(checkpoint["args"], args)
    else:
        run_dir = os.path.join(args.runs_dir, f"{game}__{args.exp_name}__{args.moe}{args.num_experts}__{args.seed}__{int(time.time())}")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    explore_rng = np.random.default_rng(args.seed)  # epsilon-greedy and no-op starts of training

    if args.rom_file:
        use_rom_file(gym.spec(env_id).kwargs["game"], args.rom_file)
    envs = AtariEnvs(env_id, args.num_envs, args.seed, args.sticky_actions, args.max_episode_frames,
                     os.path.join(run_dir, "videos") if args.capture_video else None, args.emulator_process,
                     args.life_loss_frame_skip)
    num_actions, K = envs.num_actions, args.num_envs
    q_net = RainbowNetwork(args, num_actions).to(device, memory_format=memory_format(device))
    # a target synced at every step holds the weights the online network has when it is read
    target_net = q_net if args.target_update_period == 1 else copy.deepcopy(q_net).requires_grad_(False)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate, eps=args.adam_eps,
                                 capturable=args.cudagraphs)
    # a run writes a row per agent step plus one per episode end, and with K environments one per
    # no-op of an episode's start too (a row per environment per vector step): a larger buffer never fills
    capacity = min(args.buffer_size, (2 if K == 1 else 2 + args.max_noops) * args.total_steps + 8 * K)
    replay_class = PrioritizedFrameReplay if args.prioritized else FrameReplay
    replay = replay_class(capacity, (84, 84), 4, args.n_step, args.gamma, device, num_streams=K)
    period, updates_per_period = updates_schedule(args)

    def noop_starts(n: int) -> np.ndarray:
        """0..max_noops-1 NOOP actions, not agent steps, to start each of n episodes (the official
        runner's `_initialize_episode`)."""
        return explore_rng.integers(args.max_noops, size=n) if args.max_noops > 0 else np.zeros(n, dtype=np.int64)

    # --- the loop's state, all of it in the checkpoint ---
    step, iteration = 0, 0
    obs_stacks = np.zeros((K, 4, 84, 84), dtype=np.uint8)  # each environment's frame stack, oldest first
    episode_returns, episode_lengths = np.zeros(K), np.zeros(K, dtype=np.int64)
    life_lost = np.zeros(K, dtype=bool)  # the last step lost a life: the next row starts the agent's next episode
    iteration_returns: list[float] = []
    last_eval_return = float("nan")
    recent_returns: deque = deque(maxlen=20)
    iteration_start = (0, time.time())
    loss_sum = torch.zeros((), device=device)  # summed on the device, read every --log-every steps
    loss_count, nonfinite = 0, torch.zeros((), dtype=torch.bool, device=device)

    def start_games(restarting: np.ndarray) -> None:
        """The no-op starts of the environments whose game begins: agent steps that the loop takes
        (`noops_left`), or with --noop-unit frame emulator frames taken here, the observation left
        at the game's first screen (the 2021 official runner; one environment)."""
        counts = noop_starts(int(restarting.sum()))
        if args.noop_unit == "step":
            noops_left[restarting] = counts
        elif restarting[0]:
            first = envs.noop_frames(int(counts[0]))
            if first is not None:
                obs_stacks[0, -1] = first

    obs_stacks[:, -1] = envs.reset(seed=args.seed)
    noops_left = np.zeros(K, dtype=np.int64)  # each environment's no-ops still to take before its episode starts
    start_games(np.ones(K, dtype=bool))
    lives = envs.lives.copy()
    if checkpoint is not None:
        q_net.load_state_dict(checkpoint["q_net"])
        target_net.load_state_dict(checkpoint["target_net"])
        load_optimizer_state(optimizer, checkpoint["optimizer"], capturable=args.cudagraphs)
        replay.load_state_dict(checkpoint["replay"])
        loop = checkpoint["loop"]
        if "obs_stacks" not in loop:
            fail(f"{ckpt_path} was written by an earlier version of this file: resume it with that version")
        step, iteration = loop["step"], loop["iteration"]
        obs_stacks, lives, noops_left, life_lost = loop["obs_stacks"], loop["lives"], loop["noops_left"], loop["life_lost"]
        episode_returns, episode_lengths = loop["episode_returns"], loop["episode_lengths"]
        iteration_returns, recent_returns = loop["iteration_returns"], deque(loop["recent_returns"], maxlen=20)
        last_eval_return = loop["last_eval_return"]
        explore_rng.bit_generator.state = loop["explore_rng"]
        set_rng_state(checkpoint["rng"])
        iteration_start = (loop["iteration_start_step"], time.time())
        if K == 1:
            envs.set_state(loop["env"])
        else:  # the vector env cannot save its emulators: the episodes in progress end here, as truncated ones
            replay.add_rows(obs_stacks[:, -1], np.zeros(K), np.zeros(K), np.zeros(K, bool), np.ones(K, bool))
            obs_stacks[:] = 0
            obs_stacks[:, -1] = envs.reset(seed=args.seed + step)
            noops_left, life_lost, lives = noop_starts(K), np.zeros(K, dtype=bool), envs.lives.copy()
            episode_returns[:], episode_lengths[:] = 0.0, 0

    logger = RunLogger(run_dir, args, resume_step=step)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({**dataclasses.asdict(args), "env_id": env_id, "num_actions": num_actions,
                   "provenance": {**run_provenance(device), **rom_provenance(env_id)}}, f, indent=1)

    update_step = make_update_step(args, q_net, target_net, optimizer, replay,
                                   augment=(functools.partial(drq_augment, shift_per=args.shift_per)
                                            if args.data_augmentation else None))
    act_input = torch.zeros((K, 4, 84, 84), dtype=torch.uint8, device=device)
    act_step = make_act_step(args, q_net, act_input)
    act_host = torch.zeros((K, 4, 84, 84), dtype=torch.uint8, pin_memory=device.type == "cuda")
    pending_actions = PendingActions(K, device)
    eval_input = torch.zeros((args.eval_episodes, 4, 84, 84), dtype=torch.uint8, device=device)
    eval_step = CapturedStep(torch.no_grad()(lambda: greedy_choice(q_net(eval_input)[0])), args.cudagraphs)

    def checkpoint_state() -> dict:
        return {
            "args": dataclasses.asdict(args), "q_net": q_net.state_dict(), "target_net": target_net.state_dict(),
            "optimizer": optimizer.state_dict(), "replay": replay.state_dict(), "rng": rng_state(),
            "loop": {"step": step, "iteration": iteration, "obs_stacks": obs_stacks.copy(), "lives": lives.copy(),
                     "noops_left": noops_left.copy(), "life_lost": life_lost.copy(),
                     "episode_returns": episode_returns.copy(), "episode_lengths": episode_lengths.copy(),
                     "iteration_returns": list(iteration_returns), "recent_returns": list(recent_returns),
                     "last_eval_return": last_eval_return,
                     "explore_rng": explore_rng.bit_generator.state, "env": envs.state(),
                     "iteration_start_step": iteration_start[0]},
        }

    def stop_if_nonfinite() -> None:
        if bool(nonfinite):
            logger.close()
            kept = f"the last good checkpoint ({ckpt_path}) is kept" if os.path.exists(ckpt_path) else "no checkpoint was written"
            fail(f"the loss became NaN or infinite before step {step}; the run stops and {kept}. Lower --learning-rate or check the flags")

    def run_evaluation() -> float:
        """Evaluate at this step. Its exploration, no-ops and emulator seeds come from (seed, step)
        alone; noisy experts (DER) draw their noise from torch's generator like training does."""
        set_eval_noise(q_net, args.eval_expert_noise)
        start = time.time()
        result = evaluate(args, env_id, eval_step, eval_input, num_actions, np.random.default_rng([args.seed, step]))
        set_noise(q_net, "sample")
        returns = result["eval_returns"]
        mean = float(np.mean(returns)) if returns else float("nan")
        logger.scalars({"return": mean, "seconds": time.time() - start, "greedy_q_median": result["eval_greedy_q_median"],
                        "q_margin_median": result["eval_q_margin_median"]}, step, "eval/")
        logger.record({"eval": True, "step": step, "frames": 4 * step, "eval_return": mean,
                       "eval_episodes": len(returns), **result, "eval_seconds": round(time.time() - start, 1),
                       "eval_threads": evaluation_threads(args, args.eval_episodes)})
        print(f"evaluation at step {step:,}: mean return {mean:.2f} over {len(returns)} episodes "
              f"({time.time() - start:.0f} s)", flush=True)
        return mean

    def queue_greedy_actions(epsilon: float, acting: np.ndarray) -> np.ndarray:
        """Draws which environments taking an agent step explore (epsilon-greedy) and queues on
        the device the greedy actions' forward pass, one batch for all of them, without waiting
        for it. Returns the environments that take the greedy action."""
        explore = explore_rng.random(K) < epsilon
        greedy = acting & ~explore
        if greedy.any():
            act_host.copy_(torch.from_numpy(obs_stacks))
            act_input.copy_(act_host, non_blocking=True)
            pending_actions.start(act_step())
        return greedy

    def epsilon_greedy(greedy: np.ndarray, acting: np.ndarray) -> np.ndarray:
        """The actions: greedy, random for the other environments taking an agent step, NOOP for the rest."""
        actions = np.zeros(K, dtype=np.int64)
        if greedy.any():
            actions[greedy] = pending_actions.fetch()[greedy]
        randomly = acting & ~greedy
        if randomly.any():
            actions[randomly] = explore_rng.integers(num_actions, size=int(randomly.sum()))
        return actions

    def learn(first: int, last: int) -> None:
        """The updates and target copies due at agent steps first .. last-1 (Dopamine: once the
        replay holds --min-replay-history steps, every `period` steps, after the step is stored)."""
        nonlocal loss_sum, loss_count, nonfinite
        for s in range(max(first, args.min_replay_history), last):
            if s % period == 0:
                replay.flush()
                if replay.can_sample():
                    for _ in range(updates_per_period):
                        loss = update_step()
                        loss_sum += loss
                        nonfinite |= ~torch.isfinite(loss)
                        loss_count += 1
            if target_net is not q_net and s % args.target_update_period == 0:
                target_net.load_state_dict(q_net.state_dict())

    if args.eval_model:  # no training: one evaluation of the saved network, this command's protocol
        step = load_model(args.eval_model, env_id, args, q_net)
        print(f"evaluating {args.eval_model} ({step:,} agent steps of training) on {env_id}", flush=True)
        last_eval_return = run_evaluation()
    else:
        print(f"{'resuming' if checkpoint else 'training'} {env_id} ({num_actions} actions, {K} env{'s' * (K > 1)}) on "
              f"{device}: {sum(p.numel() for p in q_net.parameters()):,} parameters, run folder {run_dir}", flush=True)
    sps_mark = (step, time.time())
    while step < args.total_steps and not args.eval_model:
        # --- act: epsilon-greedy where an agent step is due; an environment whose episode ended
        # restarts instead (its row holds the frame the episode ended on), one in its episode's
        # no-op start takes a NOOP ---
        epsilon = 0.0 if args.noisy else linearly_decaying_epsilon(step, args.min_replay_history, args.epsilon_decay_steps,
                                                                   args.epsilon_train)
        restarting = envs.ended.copy()
        nooping = ~restarting & (noops_left > 0)
        acting = ~restarting & ~nooping
        steps_now = int(acting.sum())
        # one environment stores no row for a no-op; K of them keep a row each per vector step
        # (FrameReplay), a final row that no transition reads
        stored = K > 1 or not nooping[0]
        if stored:
            replay.start_rows(obs_stacks[:, -1], ~acting, starts=life_lost)
        greedy = queue_greedy_actions(epsilon, acting)
        # the step's updates go on the device right behind the action's forward pass and run while
        # the host waits for the actions and the emulators step; they read no action, reward or
        # termination of this step, so they are exactly Dopamine's updates after the step is
        # stored (FrameReplay.start_rows), and the actions come from the weights before them
        learn(step, step + steps_now)
        actions = epsilon_greedy(greedy, acting)
        envs.send(actions)
        frames, rewards, terminated, truncated = envs.recv()
        ended = terminated | truncated
        # a lost life ends the agent's episode, not the game (Dopamine's terminal_on_life_loss)
        life_lost = acting & ~ended & (envs.lives < lives) & args.terminal_on_life_loss
        lives = envs.lives.copy()
        if stored:
            replay.finish_rows(actions, np.clip(rewards, -1.0, 1.0), terminated | life_lost)  # final rows keep 0
        obs_stacks[:, :-1] = obs_stacks[:, 1:]
        obs_stacks[:, -1] = frames
        obs_stacks[~acting | life_lost, :-1] = 0  # a new game, a no-op or a lost life: a fresh stack
        episode_returns += np.where(acting, rewards, 0.0)
        episode_lengths += acting
        noops_left -= nooping
        start_games(restarting)
        for e in np.flatnonzero(ended & acting):
            iteration_returns.append(float(episode_returns[e]))
            recent_returns.append(float(episode_returns[e]))
            logger.scalars({"episodic_return": float(episode_returns[e]), "episodic_length": int(episode_lengths[e])},
                           step, "charts/")
            episode_returns[e], episode_lengths[e] = 0.0, 0
        previous, step = step, step + steps_now
        done = step >= args.total_steps

        # --- logging, iterations, evaluations, checkpoints ---
        if crossed(previous, step, args.log_every) or done:
            stop_if_nonfinite()
            now = time.time()
            sps = (step - sps_mark[0]) / max(now - sps_mark[1], 1e-9)
            sps_mark = (step, now)
            values = {"SPS": sps, "epsilon": epsilon}
            if loss_count:
                values["td_loss"] = loss_sum.item() / loss_count
                loss_sum.zero_()
                loss_count = 0
            logger.scalars(values, step, "charts/")
            recent = float(np.mean(recent_returns)) if recent_returns else float("nan")
            print(f"step {step:>10,}/{args.total_steps:,} | {sps:7.1f} steps/s | return(last {len(recent_returns)}) "
                  f"{recent:8.2f} | loss {values.get('td_loss', float('nan')):.5f} | eps {epsilon:.3f}", flush=True)
        if crossed(previous, step, args.iteration_steps) or done:
            stop_if_nonfinite()
            record = {"iteration": iteration, "step": step, "frames": 4 * step,
                      "episode_return": float(np.mean(iteration_returns)) if iteration_returns else float("nan"),
                      "episodes": len(iteration_returns),
                      "sps": (step - iteration_start[0]) / max(time.time() - iteration_start[1], 1e-9)}
            replay.flush()
            if replay.can_sample():
                with torch.no_grad():
                    q, _, features, aux = q_net(replay.sample(args.batch_size)["obs"], with_aux=True)
                record.update(representation_metrics(features, aux, args.num_experts, args.dormant_tau))
                record["q_mean"] = q.mean().item()
            logger.scalars({k: v for k, v in record.items() if k not in ("iteration", "step")}, step, "iteration/")
            logger.record(record)
            iteration += 1
            iteration_returns = []
            iteration_start = (step, time.time())
        if args.eval_episodes and ((args.eval_every and crossed(previous, step, args.eval_every)) or done):
            eval_start = time.time()
            last_eval_return = run_evaluation()
            eval_seconds = time.time() - eval_start  # kept out of the training steps/s
            sps_mark = (sps_mark[0], sps_mark[1] + eval_seconds)
            iteration_start = (iteration_start[0], iteration_start[1] + eval_seconds)
        if (args.checkpoint_every and crossed(previous, step, args.checkpoint_every)) or done:
            stop_if_nonfinite()
            save_checkpoint(ckpt_path, checkpoint_state())
    if args.save_model and not args.eval_model:
        save_checkpoint(os.path.join(run_dir, "model.pt"), {"args": dataclasses.asdict(args), "env_id": env_id,
                                                            "step": step, "q_net": q_net.state_dict()})

    logger.record({"final": True, "step": step, "frames": 4 * step, "env_id": env_id, "game": game,
                   "agent": AGENT, "moe": args.moe, "num_experts": args.num_experts, "seed": args.seed,
                   "eval_return": last_eval_return, "score": last_eval_return})
    logger.close()
    envs.close()
    print(f"done: {step:,} agent steps; evaluation return {last_eval_return:.2f}; summary in {logger.summary_path}",
          flush=True)
    return run_dir
# ---- end block: atari100k_loop ----


if __name__ == "__main__":
    main(tyro.cli(Args))
