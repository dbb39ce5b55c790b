"""Where the host's time goes in an agent's training loop: runs the agent (its own `main`) and,
from the end of the first iteration (compilation, graph capture and random acting are over) to
the record of the last one, measures the Python process (the run's closing checkpoint, written once
however long a run is, is timed apart). Prints, per agent step, the time spent in each
part of the loop and writes JSON:

    emulator        the environment step (gymnasium's AtariPreprocessing; ale-py's vector env)
    act_wait        (--timers) the wait for the greedy actions (PendingActions.fetch): for the
                    GPU to finish the work queued before them (the previous step's updates) and
                    the forward pass
    act             launching the captured forward pass of the greedy actions, and under
                    cProfile also the wait for them
    update          launching the captured update steps (the GPU runs them asynchronously)
    replay          start_rows, finish_rows and flush (the step's rows to the GPU)
    other           the rest of the loop: numpy bookkeeping, logging, schedule checks

By default cProfile measures the parts. It adds a cost to every Python call, so the loop runs
slower than without it and the Python-heavy parts look larger; compare parts with each other, not
with unprofiled rates. `--timers` instead times only those parts with a clock (about a
microsecond per call); the rates it gives are the loop's own.
`--emulator-steps N` first times the emulators alone (random actions, no agent) for N vector
steps: the ceiling of the loop with K environments.

    python benchmark/profile_loop.py --agent drq --steps 10000 --out benchmark/results/loop_profile_drq.json
    python benchmark/profile_loop.py --agent dqn --num-envs 16 --steps 20000 --timers --emulator-steps 2000
    python benchmark/profile_loop.py --agent dqn --num-envs 1 --timers --emulator-process --emulator-steps 2000
    python benchmark/profile_loop.py --agent drq --quick     # CPU smoke: tiny network, a few hundred steps
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import importlib
import json
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perf import AGENTS  # noqa: E402


def emulator_alone(agent, opts) -> dict:
    """Agent steps/s of the agent's environments (AtariEnvs) stepped with random actions and
    nothing else: the most the loop can reach."""
    envs = agent.AtariEnvs(agent.resolve_env_id(opts.env_id), opts.num_envs, 0, True, 108_000,
                           emulator_process=opts.emulator_process)
    rng = np.random.default_rng(0)
    envs.reset(seed=0)
    for _ in range(20):
        envs.send(rng.integers(envs.num_actions, size=opts.num_envs))
        envs.recv()
    steps, start = 0, time.perf_counter()
    for _ in range(opts.emulator_steps):
        restarting = envs.ended.copy()
        envs.send(rng.integers(envs.num_actions, size=opts.num_envs))
        envs.recv()
        steps += opts.num_envs - int(restarting.sum())
    seconds = time.perf_counter() - start
    envs.close()
    return {"vector_steps": opts.emulator_steps, "agent_steps": steps, "seconds": seconds,
            "agent_steps_per_s": steps / seconds}


PARTS = ("emulator", "act_wait", "act", "update", "replay")  # act_wait: --timers only


def loop_parts(agent_file: str) -> dict:
    """part: (file name ending, function name) of the functions whose cumulative time it sums."""
    return {
        "emulator": [(agent_file, "emulator_call"), ("vector_env.py", "recv"),
                     ("connection.py", "recv")],  # the last: the wait for --emulator-process's child
        "act": [("profile_loop.py", "act_step"), (agent_file, "fetch")],
        "update": [("profile_loop.py", "update_step")],
        "replay": [(agent_file, name) for name in ("start_rows", "finish_rows", "flush")],
    }


def run_args(agent, name: str, opts, device: str):
    """The agent's Args for a run whose first iteration is `opts.warmup` steps and whose rest,
    `opts.steps` steps, is profiled; the fast path on a GPU, a tiny network on the CPU."""
    fast = dict(compile=True, cudagraphs=True, torch_deterministic=False) if device == "cuda" else {}
    tiny = dict(encoder="impala", impala_channels=(4, 8, 8), expert_hidden=16, batch_size=8) if opts.quick else {}
    experts = dict(num_experts=opts.num_experts) if opts.num_experts else {}
    common = dict(env_id=opts.env_id, device=device, log_every=10**9, iteration_steps=opts.warmup,
                  emulator_process=opts.emulator_process, **fast, **tiny, **experts)
    total = opts.warmup + opts.steps
    if name in ("der", "drq"):
        return agent.Args(**common, total_steps=total, eval_episodes=0, min_replay_history=min(1600, opts.warmup // 2),
                          num_envs=opts.num_envs)
    return agent.Args(**common, total_frames=4 * total, num_envs=opts.num_envs, min_replay_history=opts.warmup // 2,
                      epsilon_decay_steps=1, buffer_size=opts.buffer_size)


def final_step(args) -> int:
    """The agent steps of the whole run (DQN and Rainbow count frames)."""
    return args.total_steps if hasattr(args, "total_steps") else args.total_frames // 4


def ends_window(rec: dict, last_step: int) -> bool:
    """The window ends at the record of the run's last iteration. After it the loop writes the
    run's one checkpoint (its replay included: seconds for a large one), once per run however long
    it is, so it is left out of the per-step rates and reported apart (`after_training_s`)."""
    return "iteration" in rec and rec["step"] >= last_step


def profile_run(agent, args, top: int = 25) -> tuple[dict, float, int, dict]:
    """Runs agent.main(args) and profiles it from the first iteration's record to the last's.
    Returns the seconds in each part (the cumulative time of its functions), the profiled
    seconds, the profiled agent steps, and the `top` functions by their own time (where "other"
    goes)."""
    profiler, window, last_step = cProfile.Profile(), {}, final_step(args)
    make_update, make_act, record = agent.make_update_step, agent.make_act_step, agent.RunLogger.record

    def make_update_step(*a, **k):  # a named function per call site, so that cProfile tells them apart
        step = make_update(*a, **k)

        def update_step():
            return step()
        return update_step

    def make_act_step(*a, **k):
        step = make_act(*a, **k)

        def act_step():
            return step()
        return act_step

    def recording(self, rec: dict) -> None:
        if rec.get("iteration") == 0:
            window["start"] = (rec["step"], time.perf_counter())
            profiler.enable()
        elif ends_window(rec, last_step) and "start" in window:
            profiler.disable()
            window["end"] = (rec["step"], time.perf_counter())
        elif rec.get("final") and "end" in window:
            window["after"] = time.perf_counter() - window["end"][1]
        record(self, rec)

    agent.make_update_step, agent.make_act_step, agent.RunLogger.record = make_update_step, make_act_step, recording
    try:
        agent.main(args)
    finally:
        agent.make_update_step, agent.make_act_step, agent.RunLogger.record = make_update, make_act, record
    (first, t0), (last, t1) = window["start"], window["end"]
    stats = pstats.Stats(profiler).stats
    spent = {part: sum(ct for (path, _, func), (_, _, _, ct, _) in stats.items()
                       if any(path.endswith(end) and func == name for end, name in functions))
             for part, functions in loop_parts(os.path.basename(agent.__file__)).items()}
    steps = last - first
    own_time = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    functions = [{"function": f"{os.path.basename(path)}:{line}({func})", "calls_per_agent_step": calls / steps,
                  "own_us_per_agent_step": 1e6 * own / steps, "cumulative_us_per_agent_step": 1e6 * cumulative / steps}
                 for (path, line, func), (_, calls, own, cumulative, _) in own_time]
    return spent, t1 - t0, steps, {"top_functions": functions, "after_training_s": window.get("after")}


def timed_run(agent, args) -> tuple[dict, float, int, dict]:
    """Runs agent.main(args) with clocks on the loop's parts, from the first iteration's record to
    the last's. Returns the seconds in each part, the seconds timed, the agent steps timed and the
    seconds from the window's end to the run's final record."""
    window, spent, depth, last_step = {}, defaultdict(float), [0], final_step(args)
    cuda = torch.device(args.device).type == "cuda"

    def timed(part: str, fn):
        def wrapper(*a, **k):
            if "start" not in window or "end" in window or depth[0]:
                return fn(*a, **k)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[part] += time.perf_counter() - t0
                depth[0] -= 1
        return wrapper

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    make_update, make_act, record = agent.make_update_step, agent.make_act_step, agent.RunLogger.record
    patched = {(agent.AtariEnvs, "send"): "emulator", (agent.AtariEnvs, "recv"): "emulator",
               **{(agent.FrameReplay, name): "replay" for name in ("start_rows", "finish_rows", "flush")}}
    if hasattr(agent, "PendingActions"):  # agent files from before it wait for the actions in `act`'s caller
        patched[(agent.PendingActions, "fetch")] = "act_wait"
    originals = {key: getattr(*key) for key in patched}

    def make_update_step(*a, **k):
        return timed("update", make_update(*a, **k))

    def make_act_step(*a, **k):
        return timed("act", make_act(*a, **k))

    def recording(self, rec: dict) -> None:
        if rec.get("iteration") == 0:
            synchronize()
            window["start"] = (rec["step"], time.perf_counter())
        elif ends_window(rec, last_step) and "start" in window:
            synchronize()
            window["end"] = (rec["step"], time.perf_counter())
        elif rec.get("final") and "end" in window:
            window["after"] = time.perf_counter() - window["end"][1]
        record(self, rec)

    for (owner, name), part in patched.items():
        setattr(owner, name, timed(part, originals[(owner, name)]))
    agent.make_update_step, agent.make_act_step, agent.RunLogger.record = make_update_step, make_act_step, recording
    try:
        agent.main(args)
    finally:
        for key, fn in originals.items():
            setattr(*key, fn)
        agent.make_update_step, agent.make_act_step, agent.RunLogger.record = make_update, make_act, record
    (first, t0), (last, t1) = window["start"], window["end"]
    return dict(spent), t1 - t0, last - first, {"after_training_s": window.get("after")}


def parts_per_step(spent: dict, seconds: float, steps: int) -> dict:
    """Microseconds per agent step of each part that was measured, in the loop's order, and the rest."""
    out = {part: 1e6 * spent[part] / steps for part in PARTS if part in spent}
    out["other"] = 1e6 * seconds / steps - sum(out.values())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", choices=list(AGENTS), default="drq")
    parser.add_argument("--env-id", default="Pong")
    parser.add_argument("--steps", type=int, default=10_000, help="agent steps profiled, after the first iteration")
    parser.add_argument("--warmup", type=int, default=10_000, help="agent steps of the first iteration (not profiled)")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--emulator-process", action="store_true",
                        help="with --num-envs 1: the agents' --emulator-process (the emulator in a child process)")
    parser.add_argument("--num-experts", type=int, default=0, help="Soft MoE experts (0: the agent's default)")
    parser.add_argument("--buffer-size", type=int, default=1_000_000, help="DQN and Rainbow only")
    parser.add_argument("--timers", action="store_true", help="clocks on the loop's parts instead of cProfile")
    parser.add_argument("--emulator-steps", type=int, default=0, help="first time the emulators alone for this many vector steps")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads for the run (0: torch's default)")
    parser.add_argument("--top", type=int, default=15, help="without --timers: print this many functions by own time")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU, a few hundred steps")
    parser.add_argument("--out", default=None)
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.warmup, opts.buffer_size = 100, 100, 2_000
    device = "cuda" if torch.cuda.is_available() and not opts.quick else "cpu"
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    agent = importlib.import_module(AGENTS[opts.agent])
    emulator = emulator_alone(agent, opts) if opts.emulator_steps else None
    if emulator:
        print(f"emulators alone ({opts.num_envs} env{'s' * (opts.num_envs > 1)}, random actions): "
              f"{emulator['agent_steps_per_s']:.0f} agent steps/s")
    args = run_args(agent, opts.agent, opts, device)
    with tempfile.TemporaryDirectory() as tmp:
        run = timed_run if opts.timers else profile_run
        spent, seconds, steps, details = run(agent, dataclasses.replace(args, runs_dir=tmp))
    parts = parts_per_step(spent, seconds, steps)
    result = {"agent": opts.agent, "env_id": opts.env_id, "num_envs": opts.num_envs,
              "emulator_process": opts.emulator_process, "device":
              torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "method": "timers" if opts.timers else "cProfile",
              "num_experts": args.num_experts, "torch_threads": torch.get_num_threads(), "profiled_steps": steps, "profiled_seconds": seconds,
              "agent_steps_per_s_profiled": steps / seconds, "us_per_agent_step": parts, "emulator_alone": emulator,
              **details}
    print(f"{opts.agent} on {result['device']}: {steps:,} agent steps profiled, {steps / seconds:.0f} steps/s "
          f"{'with timers' if opts.timers else 'under cProfile'}")
    for part, us in parts.items():
        print(f"  {part:9s} {us:8.1f} us per agent step")
    if details.get("after_training_s") is not None:
        print(f"after the window: {details['after_training_s']:.2f} s (the closing checkpoint; not in the rates)")
    if details.get("top_functions"):
        print("functions by their own time (cProfile's overhead included), us per agent step:")
        for f in details["top_functions"][:opts.top]:
            print(f"  {f['own_us_per_agent_step']:8.1f} own {f['cumulative_us_per_agent_step']:9.1f} cumulative "
                  f"{f['calls_per_agent_step']:7.2f} calls  {f['function']}")
    if opts.out:
        os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
        with open(opts.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
