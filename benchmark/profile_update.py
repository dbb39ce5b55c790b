"""Where the time of one DQN update goes on the GPU: the update latency (captured in a CUDA graph)
under cudnn settings, memory formats and bf16 autocast, and the top kernels of one variant.

    python benchmark/profile_update.py --out benchmark/results/dqn_update_profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dqn_moe_atari as dqn  # noqa: E402
from bench_atari import CONFIGS, filled_replay, timed  # noqa: E402

VARIANTS = {
    "deterministic": dict(deterministic=True),
    "cudnn_benchmark": dict(deterministic=False),
    "channels_last": dict(deterministic=False, channels_last=True),
    "channels_last_bf16": dict(deterministic=False, channels_last=True, bf16=True),
}


def build(config: str, variant: dict, device):
    torch.backends.cudnn.deterministic = variant["deterministic"]
    torch.backends.cudnn.benchmark = not variant["deterministic"]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args = dqn.Args(env_id="Pong", buffer_size=100_000, device=str(device), cudagraphs=True, **CONFIGS[config])
    torch.manual_seed(0)
    fmt = torch.channels_last if variant.get("channels_last") else torch.contiguous_format
    q_net = dqn.QNetwork(args, 6).to(device, memory_format=fmt)
    target = dqn.QNetwork(args, 6).to(device, memory_format=fmt).requires_grad_(False)
    opt = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate, eps=args.adam_eps, capturable=True)
    replay = filled_replay(dqn, args, device, rows=20_000)
    cast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if variant.get("bf16") else contextlib.nullcontext

    def update():
        with cast():
            batch = replay.sample(args.batch_size)
            total, loss = dqn.td_loss(args, q_net, batch, dqn.td_target(target, batch))
        opt.zero_grad(set_to_none=False)
        total.backward()
        opt.step()
        return loss.detach()

    return update


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmark/results/dqn_update_profile.json")
    parser.add_argument("--repeats", type=int, default=300)
    opts = parser.parse_args()
    device = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "latency_ms": {}, "top_kernels": {}}
    for config in CONFIGS:
        for name, variant in VARIANTS.items():
            step = dqn.CapturedStep(build(config, variant, device), enabled=True)
            for _ in range(10):
                step()
            ms = statistics.median(timed(step, device, opts.repeats))
            results["latency_ms"][f"{config}/{name}"] = ms
            print(f"{config:9s} {name:16s} update {ms:.3f} ms", flush=True)
        eager = build(config, VARIANTS["cudnn_benchmark"], device)
        for _ in range(5):
            eager()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                eager()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18)
        results["top_kernels"][config] = table
        print(table, flush=True)
    with open(opts.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
