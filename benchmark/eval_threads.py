"""The Atari 100k evaluation's emulators on 1..T threads (RESULTS.md, "The evaluation's cost").

An evaluation steps --eval-episodes environments in one ale-py vector env (`make_vector_env`, the
agents' own) until the longest episode ends. This times that vector env alone, with random actions:
environment steps per second for each thread count, and the process's CPU time against the wall
clock while the loop's thread sleeps between steps (as it does while the GPU picks the actions):
threads that wait without spinning leave the cores to the runs beside them.

    python benchmark/eval_threads.py --threads 1,2,4,16 --game CrazyClimber --out benchmark/results/eval_threads.json
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import drq_moe_atari100k as drq  # noqa: E402


def time_threads(env_id: str, num_envs: int, threads: int, steps: int, pause_s: float) -> dict:
    envs = drq.make_vector_env(env_id, num_envs, False, 108_000, threads)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    num_actions = int(envs.single_action_space.n)
    for _ in range(20):  # warm-up
        envs.step(rng.integers(num_actions, size=num_envs))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        envs.step(rng.integers(num_actions, size=num_envs))
    busy_wall, busy_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        envs.step(rng.integers(num_actions, size=num_envs))
        time.sleep(pause_s)
    paused_wall, paused_cpu = time.perf_counter() - wall, time.process_time() - cpu
    envs.close()
    # CPU seconds per wall second if the threads slept through the pauses: the stepping share alone
    step_share = busy_cpu / busy_wall * (paused_wall - steps * pause_s) / paused_wall
    return {"threads": threads, "env_steps_per_s": round(steps * num_envs / busy_wall),
            "cpu_per_wall_stepping": round(busy_cpu / busy_wall, 2),
            "cpu_per_wall_with_pauses": round(paused_cpu / paused_wall, 2),
            "cpu_per_wall_with_pauses_if_no_spin": round(step_share, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--game", default="CrazyClimber")
    p.add_argument("--envs", type=int, default=100, help="environments (the evaluation's episodes)")
    p.add_argument("--steps", type=int, default=300, help="vector steps timed per thread count")
    p.add_argument("--pause-ms", type=float, default=5.0, help="sleep between steps in the second timing")
    p.add_argument("--out", default="benchmark/results/eval_threads.json")
    opts = p.parse_args()
    threads = [int(t) for t in opts.threads.split(",")]
    if any(t < 1 for t in threads) or opts.envs < 1 or opts.steps < 1:
        sys.exit("error: --threads, --envs and --steps take positive counts")
    env_id = drq.resolve_env_id(opts.game)
    rows = [time_threads(env_id, opts.envs, t, opts.steps, opts.pause_ms / 1000) for t in threads]
    for r in rows:
        print(f"{r['threads']:>3} thread(s): {r['env_steps_per_s']:>7,} env steps/s, CPU/wall {r['cpu_per_wall_stepping']:.2f}; "
              f"with {opts.pause_ms:g} ms pauses {r['cpu_per_wall_with_pauses']:.2f} "
              f"({r['cpu_per_wall_with_pauses_if_no_spin']:.2f} if the threads sleep through them)")
    result = {"game": opts.game, "envs": opts.envs, "steps": opts.steps, "pause_ms": opts.pause_ms,
              "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
