"""Several seeds in one process, batched through torch.func: is the update of S DQN seeds, run
as one vmapped step (each convolution becomes one grouped convolution over the seeds), faster
than S separate updates? Prints, for S = 1, 4, 8, 16, the latency of one batched update
(captured, compiled) and the time per seed-update against one seed alone, and writes JSON.

The batched step is S independent agents: every seed has its own parameters, target network,
batch and Adam moments (Adam is elementwise, so one Adam over the stacked parameters is S Adams);
`tests/test_benchmark.py` checks it against S separate updates of the agent's own loss.

    python benchmark/vmap_seeds.py --seeds 1,4,8,16 --out benchmark/results/vmap_seeds.json
    python benchmark/vmap_seeds.py --quick      # CPU smoke: tiny network, a few steps
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dqn_moe_atari as dqn  # noqa: E402
from bench_atari import filled_replay, timed  # noqa: E402


class SeedBatch:
    """S DQN agents' networks as stacked tensors (a leading seed axis on every parameter), their
    targets, and one Adam over the stack."""

    def __init__(self, args: dqn.Args, num_actions: int, seeds: list[int], device):
        nets = []
        for seed in seeds:
            torch.manual_seed(seed)
            nets.append(dqn.QNetwork(args, num_actions).to(device, memory_format=dqn.memory_format(device)))
        self.template = copy.deepcopy(nets[0]).to("meta")
        params, self.buffers = stack_module_state(nets)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.target = {k: v.detach().clone() for k, v in params.items()}
        self.optimizer = torch.optim.Adam(self.params.values(), lr=args.learning_rate, eps=args.adam_eps,
                                          capturable=args.cudagraphs)
        self.args = args

    def net(self, params, buffers):
        """One seed's network as a function of its parameters (what online_q and td_target call)."""
        return lambda obs, with_aux=False: functional_call(self.template, (params, buffers), (obs,), {"with_aux": with_aux})

    def losses(self, batch: dict) -> torch.Tensor:
        """Each seed's DQN loss on its own batch (every tensor of `batch` has a leading seed axis)."""

        def one_seed(params, target, buffers, batch):
            q_target = dqn.td_target(self.net(target, buffers), batch)
            online = dqn.online_q(self.args, self.net(params, buffers), batch)
            return dqn.td_loss(self.args, online, batch, q_target)[0]

        return vmap(one_seed)(self.params, self.target, self.buffers, batch)

    def update(self, batch: dict) -> torch.Tensor:
        losses = self.losses(batch)
        self.optimizer.zero_grad()
        losses.sum().backward()  # the seeds share no parameter: each gets its own loss's gradient
        self.optimizer.step()
        return losses.detach()


def seed_batches(replay, seeds: int, batch_size: int) -> dict:
    """A batch of `batch_size` transitions for each seed, stacked (seed, batch, ...). Here all
    seeds draw from one replay; in an agent each would draw from its own stream."""
    batch = replay.sample(seeds * batch_size)
    return {k: v.reshape(seeds, batch_size, *v.shape[1:]) for k, v in batch.items()}


def measure(args: dqn.Args, seeds: int, device, repeats: int) -> dict:
    dqn.configure_backends(device, args.torch_deterministic)
    group = SeedBatch(args, 6, list(range(1, seeds + 1)), device)
    replay = filled_replay(dqn, args, device, rows=min(args.buffer_size - 1, 20_000))

    def step():
        return group.update(seed_batches(replay, seeds, args.batch_size))

    fn = torch.compile(step) if args.compile else step
    captured = dqn.CapturedStep(fn, args.cudagraphs)
    start = time.time()
    for _ in range(10):  # compilation, capture, cudnn autotuning
        captured()
    ms = statistics.median(timed(captured, device, repeats))
    return {"seeds": seeds, "update_ms": ms, "ms_per_seed_update": ms / seeds, "build_s": time.time() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--no-compile", action="store_true", help="CUDA graphs only")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke test")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "vmap_seeds.json"))
    opts = parser.parse_args()
    cuda = torch.cuda.is_available() and not opts.quick
    device = torch.device("cuda" if cuda else "cpu")
    args = dqn.Args(env_id="Pong", moe="soft", num_experts=8, buffer_size=100_000, device=str(device),
                    compile=cuda and not opts.no_compile, cudagraphs=cuda, torch_deterministic=not cuda)
    if opts.quick:
        args = dataclasses.replace(args, impala_channels=(4, 8, 8), expert_hidden=16, num_experts=4, batch_size=8,
                                   buffer_size=2000)
        opts.repeats = 3
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "network": "Soft MoE-8, Impala" if not opts.quick else "tiny",
               "rows": []}
    for s in [int(x) for x in opts.seeds.split(",")]:
        row = measure(args, s, device, opts.repeats)
        one = results["rows"][0]["update_ms"] if results["rows"] and results["rows"][0]["seeds"] == 1 else None
        row["speedup_vs_separate"] = one * s / row["update_ms"] if one else None
        results["rows"].append(row)
        print(f"{s:3d} seeds in one update: {row['update_ms']:7.3f} ms, {row['ms_per_seed_update']:6.3f} ms per seed"
              + (f", {row['speedup_vs_separate']:.2f}x one seed's rate" if one else ""), flush=True)
        torch._dynamo.reset()
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
