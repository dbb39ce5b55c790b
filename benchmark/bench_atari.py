"""Speed of an Atari agent (dqn_moe_atari.py, rainbow_moe_atari.py): update latency, action
latency, environment rate and agent steps/s of a real training segment, for the baseline
(--moe none) and Soft MoE-8 on the Impala encoder, in several execution modes. Prints a table
and writes every number to a JSON file.

    python benchmark/bench_atari.py --agent dqn --out benchmark/results/dqn_speed.json
    python benchmark/bench_atari.py --agent rainbow --out benchmark/results/rainbow_speed.json
    python benchmark/bench_atari.py --quick          # CPU smoke: tiny sizes, a few steps
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import importlib

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
AGENTS = {"dqn": "dqn_moe_atari", "rainbow": "rainbow_moe_atari"}

CONFIGS = {"baseline": dict(moe="none"), "softmoe8": dict(moe="soft", num_experts=8)}
MODES = {  # flags of each execution mode; none changes the algorithm
    "eager": dict(),
    "cudagraphs": dict(cudagraphs=True),
    "cudagraphs_nondet": dict(cudagraphs=True, torch_deterministic=False),
    "compile_cudagraphs_nondet": dict(cudagraphs=True, compile=True, torch_deterministic=False),
}


def timed(fn, device, repeats: int) -> list[float]:
    """Milliseconds per call of fn(), each call timed on its own (events on CUDA)."""
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            out.append(1e3 * (time.perf_counter() - t))
    return out


def filled_replay(agent, args, device, rows: int):
    """The agent's replay holding `rows` random frames in episodes of 500 steps."""
    cls = agent.PrioritizedFrameReplay if getattr(args, "prioritized", False) else agent.FrameReplay
    replay = cls(args.buffer_size, (84, 84), 4, args.n_step, args.gamma, device)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(64, 84, 84), dtype=np.uint8)
    for i in range(rows):
        replay.add(frames[i % 64], int(rng.integers(6)), float(rng.normal()), False)
        if i % 500 == 499:
            replay.add_final(frames[(i + 1) % 64])
    replay.flush()
    return replay


def update_parts(agent, args, device, memory_format=None, adam=None) -> dict:
    """The agent's update step (`make_update_step`, DrQ with its augmentation) and what it works
    on (online and target networks, Adam, a replay of random frames), built as the training loop
    builds them."""
    torch.manual_seed(0)
    agent.configure_backends(device, args.torch_deterministic, args.triton_convs, args.tf32)
    network = getattr(agent, "RainbowNetwork", None) or agent.QNetwork
    fmt = memory_format or agent.memory_format(device)
    q_net = network(args, 6).to(device, memory_format=fmt)
    target = network(args, 6).to(device, memory_format=fmt).requires_grad_(False)
    opt = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate, eps=args.adam_eps,
                           **(adam or dict(capturable=args.cudagraphs)))
    replay = filled_replay(agent, args, device, rows=min(args.buffer_size - 1, 20_000))
    augment = {"augment": agent.drq_augment} if getattr(args, "data_augmentation", False) else {}  # DrQ(eps)
    update = agent.make_update_step(args, q_net, target, opt, replay, **augment)
    return {"q_net": q_net, "target": target, "optimizer": opt, "replay": replay, "update": update}


def update_and_act_latency(agent, args, device, repeats: int) -> dict:
    parts = update_parts(agent, args, device)
    q_net, update = parts["q_net"], parts["update"]
    act_input = torch.zeros((1, 4, 84, 84), dtype=torch.uint8, device=device)
    act = agent.make_act_step(args, q_net, act_input)
    for _ in range(10):  # warm-up: compilation, capture, cudnn autotuning
        update()
        act().item()
    up = timed(update, device, repeats)
    ac = timed(lambda: act().item(), device, repeats)
    return {"update_ms_median": statistics.median(up), "update_ms_p90": float(np.percentile(up, 90)),
            "act_ms_median": statistics.median(ac), "params": sum(p.numel() for p in q_net.parameters())}


def env_rate(agent, steps: int) -> float:
    env = agent.make_env("ALE/Pong-v5", 0, True, 108_000)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.integers(6)))
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t)


def training_sps(agent, args, steps: int) -> float:
    """Agent steps/s of a real run once it is learning, in three iterations of `steps`: random
    acting fills the replay, the first learning iteration absorbs compilation, graph capture and
    cudnn autotuning, and the second one (epsilon at its final value) is timed."""
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(args, total_frames=4 * 3 * steps, min_replay_history=steps, iteration_steps=steps,
                                  epsilon_decay_steps=1, log_every=10**9, runs_dir=tmp)
        run_dir = agent.main(run)
        with open(os.path.join(run_dir, "summary.jsonl")) as f:
            records = [json.loads(line) for line in f]
    return records[2]["sps"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", choices=list(AGENTS), default="dqn")
    parser.add_argument("--out", default=None, help="default: benchmark/results/<agent>_speed.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke test")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=10_000, help="steps of each of the three iterations of a training segment")
    parser.add_argument("--modes", default="eager,cudagraphs,cudagraphs_nondet", help=f"of {','.join(MODES)}")
    parser.add_argument("--train-modes", default="eager,cudagraphs,cudagraphs_nondet", help="modes that also run a training segment")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--no-training", action="store_true", help="skip the training segments")
    opts = parser.parse_args()
    agent = importlib.import_module(AGENTS[opts.agent])
    opts.out = opts.out or f"benchmark/results/{opts.agent}_speed.json"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = dict(env_id="Pong", encoder="impala", buffer_size=100_000, device=str(device))
    if opts.quick:
        base.update(impala_channels=(4, 8, 8), expert_hidden=32, buffer_size=3_000)
        opts.repeats, opts.train_steps = 5, 200
    results = {"agent": opts.agent, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "env_steps_per_s": env_rate(agent, 500 if opts.quick else 5_000), "runs": []}
    print(f"device {results['device']}, torch {results['torch']}; Pong env alone: {results['env_steps_per_s']:.0f} steps/s", flush=True)
    for name in opts.configs.split(","):
        for mode in opts.modes.split(","):
            if MODES[mode].get("cudagraphs") and device.type != "cuda":
                continue
            args = agent.Args(**base, **CONFIGS[name], **MODES[mode])
            row = {"config": name, "mode": mode, **update_and_act_latency(agent, args, device, opts.repeats)}
            if not opts.no_training and mode in opts.train_modes.split(","):
                row["train_sps"] = training_sps(agent, args, opts.train_steps)
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(results, f, indent=1)
    print("\n| config | mode | params | update ms (median) | act ms | train steps/s |\n|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['config']} | {r['mode']} | {r['params']:,} | {r['update_ms_median']:.2f} | {r['act_ms_median']:.2f} | "
              f"{r.get('train_sps', float('nan')):.0f} |")


if __name__ == "__main__":
    main()
