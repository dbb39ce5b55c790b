"""Can the host's work overlap one Atari emulator's step? (issue 7, the one-environment loop)

With one environment the agents step a gymnasium env (AtariPreprocessing over ale-py) in the
loop's own thread, so that a checkpoint can save its emulator state. This times, on this machine:

  - the emulator alone (gymnasium's env, and ale-py's vector env with one environment, both as
    the agents build them: `make_env`, `make_vector_env`),
  - a stand-in for the loop's Python work alone (a pure-Python loop of about the same length),
  - both at once: the gymnasium env stepped in a second Python thread while the main thread
    works, the vector env's C++ thread stepping between `send` and `recv` while it works, and
    the gymnasium env in a child process (the agents' `--emulator-process`, `AtariEnvs`) stepping
    between `send` and `recv`.

If a thread's emulator step held the GIL throughout, "both" would take the sum of the two; if
it released it, their maximum. Needs a free core for the second thread.

    python benchmark/emulator_overlap.py --steps 1000 --out /tmp/overlap.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dqn_moe_atari as agent  # noqa: E402  (its environments, as every agent builds them)

MAX_EPISODE_FRAMES = 108_000


def gymnasium_env(env_id: str):
    env = agent.make_env(env_id, 0, False, MAX_EPISODE_FRAMES)
    env.reset(seed=0)
    return env


def vector_env(env_id: str):
    env = agent.make_vector_env(env_id, 1, False, MAX_EPISODE_FRAMES, 1)
    env.reset(seed=0)
    return env


def step_gymnasium(env, steps: int) -> None:
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            env.reset()


def python_work(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(game: str, steps: int) -> dict:
    """Microseconds per step of each case."""
    env_id = agent.resolve_env_id(game)
    env, vec = gymnasium_env(env_id), vector_env(env_id)
    action = np.zeros(1, dtype=np.int64)
    gym_alone = seconds(lambda: step_gymnasium(env, steps)) / steps
    vec_alone = seconds(lambda: [vec.step(action) for _ in range(steps)]) / steps
    probe = 20_000  # size the Python work to about one emulator step
    per_iteration = seconds(lambda: python_work(probe)) / probe
    iterations = max(1, int(gym_alone / per_iteration))
    work_alone = seconds(lambda: [python_work(iterations) for _ in range(steps)]) / steps

    def gym_in_thread():
        worker = threading.Thread(target=step_gymnasium, args=(env, steps))
        worker.start()
        for _ in range(steps):
            python_work(iterations)
        worker.join()

    def vec_between_send_and_recv():
        for _ in range(steps):
            vec.send(action)
            python_work(iterations)
            vec.recv()

    def child_between_send_and_recv(work: bool):
        for _ in range(steps):
            child.send(action)
            if work:
                python_work(iterations)
            child.recv()

    gym_both = seconds(gym_in_thread) / steps
    vec_both = seconds(vec_between_send_and_recv) / steps
    child = agent.AtariEnvs(env_id, 1, 0, False, MAX_EPISODE_FRAMES, emulator_process=True)
    child.reset(seed=0)
    child_alone = seconds(lambda: child_between_send_and_recv(False)) / steps
    child_both = seconds(lambda: child_between_send_and_recv(True)) / steps
    child.close()
    env.close()
    vec.close()
    us = 1e6
    return {"game": game, "steps": steps, "cpu_count": os.cpu_count(),
            "gymnasium_alone_us": gym_alone * us, "vector_env_alone_us": vec_alone * us, "python_work_alone_us": work_alone * us,
            "gymnasium_thread_with_work_us": gym_both * us, "vector_env_with_work_us": vec_both * us,
            "emulator_process_alone_us": child_alone * us, "emulator_process_with_work_us": child_both * us,
            "gymnasium_overlap": overlap(gym_alone, work_alone, gym_both),
            "vector_env_overlap": overlap(vec_alone, work_alone, vec_both),
            "emulator_process_overlap": overlap(child_alone, work_alone, child_both)}


def overlap(a: float, b: float, both: float) -> float:
    """1 when `both` is max(a, b) (full overlap), 0 when it is a + b (none)."""
    return (a + b - both) / min(a, b)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", help="JSON file of the results")
    opts = parser.parse_args(argv)
    result = measure(opts.game, opts.steps)
    print(f"{opts.game}, {opts.steps} steps, {result['cpu_count']} cores (us per step):")
    print(f"  gymnasium env alone {result['gymnasium_alone_us']:.0f}, vector env alone {result['vector_env_alone_us']:.0f}, "
          f"Python work alone {result['python_work_alone_us']:.0f}")
    print(f"  gymnasium env in a thread + work: {result['gymnasium_thread_with_work_us']:.0f} "
          f"(overlap {result['gymnasium_overlap']:.2f})")
    print(f"  vector env send, work, recv: {result['vector_env_with_work_us']:.0f} (overlap {result['vector_env_overlap']:.2f})")
    print(f"  gymnasium env in a child process alone {result['emulator_process_alone_us']:.0f}; send, work, recv: "
          f"{result['emulator_process_with_work_us']:.0f} (overlap {result['emulator_process_overlap']:.2f})")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
