"""Speed of the Atari 100k agents (der_moe_atari100k.py, drq_moe_atari100k.py): how long a whole
run takes (100k agent steps of training plus 100 evaluation episodes), alone and with several runs
sharing one GPU, and the training steps/s of the eager path. Prints a table and writes every
number to a JSON file.

    python benchmark/bench_atari100k.py --out benchmark/results/atari100k_speed.json
    python benchmark/bench_atari100k.py --parts alone --pairs drq:softmoe4 --num-envs 4   # K environments per run
    python benchmark/bench_atari100k.py --parts alone --pairs drq:softmoe4 --warm  # compilation caches warm, as in a sweep
    python benchmark/bench_atari100k.py --parts parallel --parallel 8 --steps 20000 --mps  # 8 runs through MPS
    python benchmark/bench_atari100k.py --quick      # CPU smoke: tiny network, a few hundred steps

Each run is a separate process started as a user starts it; a run's time is its wall clock from
start to exit (interpreter start, compilation and graph capture included)."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch import mps_daemon  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"der": "der_moe_atari100k.py", "drq": "drq_moe_atari100k.py"}
CONFIGS = {"baseline": ["--moe", "none"], "softmoe4": ["--moe", "soft", "--num-experts", "4"]}
MODES = {"eager": [], "captured": ["--compile", "--cudagraphs", "--no-torch-deterministic"]}
QUICK = ["--encoder", "impala", "--impala-channels", "4", "8", "8", "--expert-hidden", "16", "--batch-size", "8",
         "--min-replay-history", "100", "--iteration-steps", "100", "--eval-episodes", "2", "--max-episode-frames", "800",
         "--device", "cpu"]


def launch(script: str, flags: list[str], runs_dir: str, threads: int, env: dict | None = None) -> tuple[subprocess.Popen, float]:
    """One run of an agent file as a process with `threads` CPU threads (torch and the emulators)."""
    cmd = [sys.executable, os.path.join(ROOT, script), *flags, "--runs-dir", runs_dir]
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), time.time()


def finish(proc: subprocess.Popen, started: float, runs_dir: str) -> dict:
    out, _ = proc.communicate()
    seconds = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"error: a benchmark run failed:\n{out[-3000:]}")
    (run,) = os.listdir(runs_dir)
    with open(os.path.join(runs_dir, run, "summary.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = [float(x) for x in re.findall(r"evaluation at step [\d,]+: .*\((\d+) s\)", out)]
    learning = [r["sps"] for r in records if "iteration" in r and r["iteration"] > 0]
    return {"seconds": seconds, "eval_seconds": sum(evals), "score": records[-1]["score"],
            "train_sps_median": statistics.median(learning) if learning else None}


def run_group(specs: list[tuple[str, list[str]]], env: dict | None = None) -> list[dict]:
    """Start every (agent, flags) at once, the CPU cores split between them, and wait for all."""
    threads = max(1, (os.cpu_count() or 1) // len(specs))  # oversubscribed cores cost 3x on 2 cores
    with tempfile.TemporaryDirectory() as tmp:
        started = []
        for i, (agent, flags) in enumerate(specs):
            runs_dir = os.path.join(tmp, str(i))
            os.makedirs(runs_dir)
            started.append((*launch(SCRIPTS[agent], flags, runs_dir, threads, env), runs_dir))
        return [finish(p, t, d) for p, t, d in started]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmark", "results", "atari100k_speed.json"))
    parser.add_argument("--env-id", default="Pong")
    parser.add_argument("--steps", type=int, default=100_000, help="agent steps of a whole run")
    parser.add_argument("--eager-steps", type=int, default=4_000, help="steps of the eager segment (learning starts at 1,600)")
    parser.add_argument("--parallel", default="1,8", help="numbers of runs sharing the GPU (captured; the pairs in turn)")
    parser.add_argument("--parts", default="eager,alone,parallel")
    parser.add_argument("--pairs", default="", help="only these agent:config pairs, e.g. der:softmoe4,drq:baseline")
    parser.add_argument("--num-envs", type=int, default=1, help="environments per run (1: the protocol)")
    parser.add_argument("--mps", action="store_true", help="runs sharing the GPU do so through NVIDIA's MPS (launch.py --mps)")
    parser.add_argument("--warm", action="store_true",
                        help="first run every pair briefly, untimed, so that the timed runs find torch.compile's on-disk "
                             "caches holding their graphs, as every run of a sweep but the first on a machine does")
    parser.add_argument("--warm-steps", type=int, default=2_500, help="agent steps of a warm-up run (updates start at 1,600)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke test")
    opts = parser.parse_args()
    base = ["--env-id", opts.env_id, "--num-envs", str(opts.num_envs)] + (QUICK if opts.quick else [])
    steps, eager_steps = (150, 150) if opts.quick else (opts.steps, opts.eager_steps)
    modes = {"eager": []} if opts.quick else MODES
    parts = opts.parts.split(",")
    pairs = [(a, c) for a in SCRIPTS for c in CONFIGS]
    if opts.pairs:
        pairs = [tuple(p.split(":")) for p in opts.pairs.split(",")]
        if not all(a in SCRIPTS and c in CONFIGS for a, c in pairs):
            raise SystemExit(f"error: --pairs takes agent:config with agent in {list(SCRIPTS)} and config in {list(CONFIGS)}")
    result = {"env_id": opts.env_id, "steps": steps, "num_envs": opts.num_envs, "mps": opts.mps, "warm": opts.warm, "runs": []}
    try:
        import torch
        result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        result["torch"] = torch.__version__
    except ImportError:
        pass

    def report(row):
        result["runs"].append(row)
        print(json.dumps(row), flush=True)

    if "eager" in parts:  # training steps/s of the eager path, no evaluation
        for agent, config in pairs:
            flags = [*base, *CONFIGS[config], "--total-steps", str(eager_steps), "--eval-episodes", "0",
                     "--iteration-steps", str(max(eager_steps // 4, 1))]
            (row,) = run_group([(agent, flags)])
            report({"part": "eager", "agent": agent, "config": config, "mode": "eager", "parallel": 1, **row})
    warmed = set()
    for part, counts in (("alone", [1]), ("parallel", [int(k) for k in opts.parallel.split(",") if int(k) > 1])):
        if part not in parts:
            continue
        for mode, mode_flags in modes.items():
            if mode == "eager" and not opts.quick:
                continue  # a whole eager run takes hours: its steps/s come from the eager part
            if opts.warm and mode not in warmed:
                warmed.add(mode)
                warm_steps = 150 if opts.quick else opts.warm_steps
                specs = [(a, [*base, *CONFIGS[c], *mode_flags, "--total-steps", str(warm_steps), "--eval-episodes", "0",
                              "--iteration-steps", str(warm_steps)]) for a, c in pairs]
                with mps_daemon(opts.mps and len(specs) > 1) as mps_env:
                    rows = run_group(specs, mps_env)
                for (a, c), row in zip(pairs, rows):
                    report({"part": "warm-up", "agent": a, "config": c, "mode": mode, "parallel": len(specs), **row})
            for k in counts:
                groups = [[pairs[i]] for i in range(len(pairs))] if k == 1 else [[pairs[i % len(pairs)] for i in range(k)]]
                for group in groups:
                    specs = [(a, [*base, *CONFIGS[c], *mode_flags, "--total-steps", str(steps), "--seed", str(i + 1)])
                             for i, (a, c) in enumerate(group)]
                    t = time.time()
                    with mps_daemon(opts.mps and k > 1) as mps_env:
                        rows = run_group(specs, mps_env)
                    wall = time.time() - t
                    for (a, c), row in zip(group, rows):
                        report({"part": part, "agent": a, "config": c, "mode": mode, "parallel": k, **row})
                    if k > 1:
                        learning = [r["train_sps_median"] for r in rows if r["train_sps_median"]]
                        report({"part": "throughput", "mode": mode, "parallel": k, "mps": opts.mps, "wall_seconds": wall,
                                "runs_per_hour": 3600 * k / wall, "train_sps_total": sum(learning) or None})
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
