"""Performance of the Atari agents in one command: update latency, agent steps/s of a real
training segment, updates/s and peak GPU memory, for each agent, network and execution mode, side
by side; agent steps/s with K environments per run (--num-envs); and the throughput of several
seeds sharing the GPU (separate processes), as 200M-frame runs per hour. Prints Markdown tables
and writes every number to a JSON file. The Atari 100k agents (der, drq) get latency rows here;
their whole runs (training and evaluation) are timed by benchmark/bench_atari100k.py.

    python benchmark/perf.py --out benchmark/results/perf.json
    python benchmark/perf.py --agents dqn --modes captured --num-envs 1,8 --seeds-at-once 4
    python benchmark/perf.py --agents dqn --configs softmoe8 --modes "" --num-envs "" --seeds-at-once 1,8,16 --mps
    python benchmark/perf.py --agents der,drq --configs baseline,softmoe4 --train-modes ""
    python benchmark/perf.py --quick     # CPU smoke: tiny network, a few hundred steps

"captured" is `--compile --cudagraphs --no-torch-deterministic`; no mode changes the algorithm.
A training segment is three iterations of --train-steps agent steps: random acting fills the
replay, the first learning iteration absorbs compilation, graph capture and cudnn autotuning,
and the third (epsilon at its final value) is timed."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_atari import AGENTS, CONFIGS, training_sps, update_and_act_latency  # noqa: E402
from bench_atari100k import launch  # noqa: E402
from launch import mps_daemon  # noqa: E402

AGENTS = {**AGENTS, "der": "der_moe_atari100k", "drq": "drq_moe_atari100k"}
ATARI_100K = ("der", "drq")  # one environment, whole runs with evaluation: no training segments here
CONFIGS = {**CONFIGS, "softmoe4": dict(moe="soft", num_experts=4)}  # the paper's Atari 100k network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"eager": dict(), "captured": dict(cudagraphs=True, compile=True, torch_deterministic=False),
         "captured_cudnn": dict(cudagraphs=True, compile=True, torch_deterministic=False, triton_convs=False)}
QUICK = dict(impala_channels=(4, 8, 8), expert_hidden=16, batch_size=8, buffer_size=4_000)
FRAMES_PER_RUN = 200_000_000


def flags_of(values: dict) -> list[str]:
    """Args fields -> command-line flags, as tyro spells them."""
    out = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (tuple, list)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def training_row(agent, args, steps: int, device) -> dict:
    """Agent steps/s, updates/s and the peak GPU memory of a training segment."""
    gc.collect()  # the previous segment's replay and graphs
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sps = training_sps(agent, args, steps)
    period, updates_per_period = agent.updates_schedule(args)
    row = {"train_sps": sps, "updates_per_s": sps * updates_per_period / period}
    if device.type == "cuda":
        row["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def seeds_at_once(script: str, base: dict, k: int, steps: int, threads: int, mps: bool) -> dict:
    """k runs of `script` started together, each its own process (sharing the GPU through MPS with
    `mps`): the sum of their steady-state agent steps/s, and 200M-frame runs per hour at that rate."""
    with tempfile.TemporaryDirectory() as tmp, mps_daemon(mps and k > 1) as mps_env:
        run = {**base, "total_frames": 4 * 3 * steps, "min_replay_history": steps, "iteration_steps": steps,
               "epsilon_decay_steps": 1, "log_every": 10**9}
        started = time.time()
        procs = [launch(script, flags_of({**run, "seed": seed}), f"{tmp}/{seed}", threads, mps_env)[0]
                 for seed in range(1, k + 1)]
        sps = []
        for seed, proc in enumerate(procs, start=1):
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"error: a run of the seeds-at-once part failed:\n{out[-3000:]}")
            (run_dir,) = os.listdir(f"{tmp}/{seed}")
            with open(os.path.join(tmp, str(seed), run_dir, "summary.jsonl")) as f:
                sps.append([json.loads(line) for line in f][2]["sps"])
        total = sum(sps)
        return {"seeds_at_once": k, "mps": bool(mps_env), "sps_per_run": sps, "sps_total": total, "wall_s": time.time() - started,
                "runs_per_hour": 3600 * total / (FRAMES_PER_RUN / 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmark", "results", "perf.json"))
    parser.add_argument("--agents", default="dqn,rainbow", help=f"of {','.join(AGENTS)}")
    parser.add_argument("--configs", default="baseline,softmoe8", help=f"of {','.join(CONFIGS)}")
    parser.add_argument("--modes", default="eager,captured", help="update latency in these modes")
    parser.add_argument("--train-modes", default="captured", help="modes that also run training segments")
    parser.add_argument("--num-envs", default="1,4,8,16", help="environments per run of the training segments ('' for none)")
    parser.add_argument("--train-steps", type=int, default=10_000, help="agent steps of each of a segment's three iterations")
    parser.add_argument("--buffer-size", type=int, default=1_000_000, help="replay of the training segments (GPU memory)")
    parser.add_argument("--seeds-at-once", default="", help="e.g. 1,4,8: runs sharing the GPU (first agent, last config, captured)")
    parser.add_argument("--mps", action="store_true", help="the seeds-at-once runs share the GPU through NVIDIA's MPS")
    parser.add_argument("--seed-num-envs", type=int, default=1, help="environments per run in the seeds-at-once part")
    parser.add_argument("--repeats", type=int, default=200, help="timed updates per latency row")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke test")
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = dict(env_id="Pong", encoder="impala", device=str(device))
    if opts.quick:
        base.update(QUICK)
        opts.repeats, opts.train_steps, opts.buffer_size = 3, 150, QUICK["buffer_size"]
    modes = [m for m in opts.modes.split(",") if m and (device.type == "cuda" or not MODES[m])]
    train_modes = [m for m in opts.train_modes.split(",") if m and (device.type == "cuda" or not MODES[m])]
    num_envs = [int(k) for k in opts.num_envs.split(",") if k]
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "latency": [], "training": [], "seeds": []}
    print(f"device {results['device']}, torch {results['torch']}, {results['cpus']} CPU cores", flush=True)
    for agent_name in opts.agents.split(","):
        agent = importlib.import_module(AGENTS[agent_name])
        short = agent_name in ATARI_100K
        agent_base = {k: v for k, v in base.items() if k != "encoder"} if short else base  # their own encoder (Nature)
        for config in opts.configs.split(","):
            for mode in modes:
                args = agent.Args(**{**agent_base, "buffer_size": min(opts.buffer_size, 100_000)}, **CONFIGS[config], **MODES[mode])
                row = {"agent": agent_name, "config": config, "mode": mode,
                       **update_and_act_latency(agent, args, device, opts.repeats)}
                results["latency"].append(row)
                print(json.dumps(row), flush=True)
            for mode in train_modes if not short else []:
                for k in num_envs:
                    args = agent.Args(**{**base, "buffer_size": opts.buffer_size, "num_envs": k}, **CONFIGS[config], **MODES[mode])
                    row = {"agent": agent_name, "config": config, "mode": mode, "num_envs": k,
                           **training_row(agent, args, opts.train_steps, device)}
                    results["training"].append(row)
                    print(json.dumps(row), flush=True)
    if opts.seeds_at_once:
        agent_name, config = opts.agents.split(",")[0], opts.configs.split(",")[-1]
        if agent_name in ATARI_100K:
            sys.exit("error: --seeds-at-once runs the 200M-frame agents; Atari 100k runs in parallel: bench_atari100k.py --parts parallel")
        mode = train_modes[-1] if train_modes else "eager"
        run = {**base, **CONFIGS[config], **MODES[mode], "buffer_size": opts.buffer_size, "num_envs": opts.seed_num_envs}
        for k in map(int, opts.seeds_at_once.split(",")):
            row = {"agent": agent_name, "config": config, "mode": mode, "num_envs": opts.seed_num_envs,
                   **seeds_at_once(AGENTS[agent_name] + ".py", run, k, opts.train_steps, max(1, (os.cpu_count() or 1) // k),
                                   opts.mps)}
            results["seeds"].append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(results, f, indent=1)
    print(markdown(results))
    print(f"wrote {opts.out}")


def markdown(results: dict) -> str:
    lines = ["", "| agent | network | mode | parameters | update ms (median) | act ms |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['agent']} | {r['config']} | {r['mode']} | {r['params']:,} | {r['update_ms_median']:.2f} | "
              f"{r['act_ms_median']:.2f} |" for r in results["latency"]]
    lines += ["", "| agent | network | mode | envs | agent steps/s | updates/s | GPU memory GiB |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['agent']} | {r['config']} | {r['mode']} | {r['num_envs']} | {r['train_sps']:.0f} | "
              f"{r['updates_per_s']:.0f} | {r.get('gpu_mem_gib', float('nan')):.1f} |" for r in results["training"]]
    if results["seeds"]:
        lines += ["", "| seeds at once | MPS | envs per run | agent steps/s, sum | per run | 200M-frame runs per hour |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['seeds_at_once']} | {'yes' if r['mps'] else 'no'} | {r['num_envs']} | {r['sps_total']:.0f} | "
                  f"{', '.join(f'{s:.0f}' for s in r['sps_per_run'])} | {r['runs_per_hour']:.2f} |" for r in results["seeds"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
