"""Where the time of one update goes on the GPU, kernel by kernel, and what each candidate
change to the fast path (`--compile --cudagraphs --no-torch-deterministic`, channels-last) buys.

For every agent it builds the agent's own update (`make_update_step`, a replay of random frames,
batch 32) and times it, captured in a CUDA graph, under each variant:

    fast           the agents' fast path as it is (the Impala 3x3 convolutions in Triton)
    cudnn          the fast path with cuDNN's convolutions (`--no-triton-convs`)
    graph_only     CUDA graph without torch.compile (for reference)
    bf16           + bf16 autocast around the whole update (changes the numerics)
    limit0         + cudnn autotuning over every algorithm (`cudnn.benchmark_limit = 0`, default 10)
    fused_adam     + Adam(fused=True) instead of the capturable for-each Adam
    nchw           the network in NCHW instead of channels-last
    max_autotune   + torch.compile(mode="max-autotune-no-cudagraphs"): Triton conv/matmul templates
    one_stream     the targets (target network, double DQN's pass) after the online forward on the
                   same stream, not beside it on a second stream (SideStream; as before the seventh
                   and eighth passes, but still compiled in pieces); same arithmetic, so the
                   parameters' checksum must match fast's
    relu_unfused   the ReLUs of the residual blocks as their own operations (torch.compile fuses them
                   with what it can), not inside the Triton convolutions (as before the sixth pass)
    wgrad_beside   each Triton convolution's weight gradient on a second CUDA stream, beside the
                   data gradients that the backward pass waits on; the network's first convolution
                   (no data gradient, the last in the backward pass) joins the streams and takes its
                   own weight gradient after. The same kernels in the same order on each stream,
                   so the parameters' checksum must match fast's

(benchmark/RESULTS.md also lists "gradients set to None", measured as a variant before the agents
adopted it.)

Then it profiles graph replays of the fast path and sums the GPU time of each kernel per
update, grouped by kind (convolution forward, data and weight gradients, pooling, matmuls,
gradient zeroing, the fused Triton kernels of torch.compile). Prints everything and writes JSON.

    python benchmark/profile_update.py --agents dqn,rainbow,der --out benchmark/results/update_profile.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import re
import statistics
import sys
import time
import traceback
from collections import defaultdict

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_atari import timed, update_parts  # noqa: E402

AGENTS = {  # module, network flags (Soft MoE-8 on Impala for the 200M agents, the paper's Soft MoE-4 for DER)
    "dqn": ("dqn_moe_atari", dict(moe="soft", num_experts=8)),
    "rainbow": ("rainbow_moe_atari", dict(moe="soft", num_experts=8)),
    "der": ("der_moe_atari100k", dict(moe="soft", num_experts=4)),
    "drq": ("drq_moe_atari100k", dict(moe="soft", num_experts=4)),
}
VARIANTS = ("fast", "cudnn", "graph_only", "bf16", "limit0", "fused_adam", "nchw", "max_autotune", "one_stream",
            "relu_unfused", "wgrad_beside")
KINDS = [  # (kind, pattern on the kernel name), first match wins
    ("conv forward + data grad (Triton)", r"_conv3x3_kernel"),
    ("conv weight grad", r"wgrad|init_device_workspace"),
    ("conv data grad", r"dgrad"),
    ("conv forward", r"fprop|convolve_common|converttensor"),
    ("pooling", r"pool"),
    ("matmul", r"gemm|cublas|splitkreduce"),
    ("grad zero + accumulate", r"fillfunctor<float>|cudafunctor_add<float>"),
    ("triton fused", r"triton"),
    ("other", r"."),
]


def kind_of(name: str) -> str:
    low = name.lower()
    return next(kind for kind, pattern in KINDS if re.search(pattern, low))


@functools.lru_cache(maxsize=None)  # one operator per agent module: a name registers once
def wgrad_beside_op(agent):
    """A drop-in for the agent's `conv3x3_backward` operator that queues the weight gradient on a
    second stream (`wgrad_beside`). The stream forks after the data the kernels read is written;
    x and dy are marked as read there, so the allocator does not hand their memory to the main
    stream while the side stream reads it."""
    streams = {}  # device -> the side stream, made at the first call

    @torch.library.custom_op(f"moe_rl_bench_{agent.__name__}::conv3x3_backward_wgrad_beside", mutates_args=())
    def backward(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, need_dx: bool,
                 relu_input: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.device not in streams:
            streams[x.device] = torch.cuda.Stream(x.device)
        main, side = torch.cuda.current_stream(), streams[x.device]
        if not need_dx:  # the first convolution: after every weight gradient queued on the side stream
            main.wait_stream(side)
            return (x.new_empty(0), *agent._conv3x3_weight_grad(x, dy, w, relu_input))
        x, dy = agent._channels_last(x), agent._channels_last(dy)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            dw, db = agent._conv3x3_weight_grad(x, dy, w, relu_input)
        for t in (x, dy):
            t.record_stream(side)
        for t in (dw, db):
            t.record_stream(main)
        dx = agent._conv3x3(dy, w, None, data_grad=True, relu_mask=x if relu_input else None)
        return dx, dw, db

    @backward.register_fake
    def _(x, w, dy, need_dx, relu_input):
        dx = x.new_empty(x.shape).contiguous(memory_format=torch.channels_last) if need_dx else x.new_empty(0)
        return dx, torch.empty_like(w), w.new_empty(w.shape[0])

    return backward


def build_update(agent, args, variant: str, device):
    """The agent's update as the training loop builds it, with the variant's change; the online
    network it trains; and how many updates it already ran."""
    torch.backends.cudnn.benchmark_limit = 0 if variant == "limit0" else 10
    fmt = torch.contiguous_format if variant == "nchw" else None
    adam = dict(fused=True) if variant == "fused_adam" else None
    run = dataclasses.replace(args, compile=variant != "graph_only", triton_convs=variant != "cudnn")
    compile_ = torch.compile
    if variant == "max_autotune":
        torch.compile = functools.partial(compile_, mode="max-autotune-no-cudagraphs")
    try:
        parts = update_parts(agent, run, device, fmt, adam)
    finally:
        torch.compile = compile_
    step = parts["update"]
    if variant == "bf16":
        raw = step.fn

        def autocast_update():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return raw()
        step = agent.CapturedStep(autocast_update, enabled=True)
    # the variants that change what gets compiled and captured: in place for the first calls only
    changed, calls = {}, 0
    if variant == "relu_unfused":
        changed[(agent.ResidualBlock, "forward")] = lambda block, x: x + block.conv1(F.relu(block.conv0(F.relu(x))))
    if variant == "one_stream":
        if not hasattr(agent, "SideStream"):
            raise ValueError(f"{agent.__name__} has no SideStream")
        changed[(agent.SideStream, "beside")] = lambda side, first, second: (first(), second())
    if variant == "wgrad_beside":
        changed[(agent, "conv3x3_backward")] = wgrad_beside_op(agent)
    if changed:
        kept = {key: getattr(*key) for key in changed}
        for key, fn in changed.items():
            setattr(*key, fn)
        try:
            for calls in range(1, step.warmup + 2):  # compiled and captured with the change
                step()
        finally:
            for key, fn in kept.items():
                setattr(*key, fn)
    return step, parts["q_net"], calls


def params_checksum(net) -> float:
    """A sum over every parameter (float64): equal across variants that compute the same thing
    after the same calls, bit for bit."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in net.parameters()))


def gpu_times(fn, calls: int) -> dict:
    """{kernel name: [us per call, launches]} over `calls` calls of fn."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time > 0:
            entry = per_kernel[event.name]
            entry[0] += event.device_time / calls  # us
            entry[1] += 1
    return per_kernel


def kernel_table(step, device, calls: int) -> dict:
    """GPU time per update of every kernel in `calls` graph replays (or calls of the compiled
    function where the profiler does not see inside graphs), and the totals by kind."""
    per_kernel, source = gpu_times(step, calls), "graph replays"
    if len(per_kernel) < 5:
        per_kernel, source = gpu_times(step.fn, calls), "compiled function"
    kernels = sorted(({"name": n, "kind": kind_of(n), "us_per_update": round(t, 2), "launches_per_update": c / calls}
                      for n, (t, c) in per_kernel.items()), key=lambda k: -k["us_per_update"])
    by_kind = defaultdict(lambda: [0.0, 0.0])
    for k in kernels:
        by_kind[k["kind"]][0] += k["us_per_update"]
        by_kind[k["kind"]][1] += k["launches_per_update"]
    return {"source": source, "kernels": kernels,
            "by_kind": {kind: {"us": round(us, 1), "kernels": n} for kind, (us, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0])},
            "kernel_us_total": round(sum(k["us_per_update"] for k in kernels), 1),
            "kernels_per_update": sum(k["launches_per_update"] for k in kernels)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="dqn,rainbow,der")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--profile-calls", type=int, default=20)
    parser.add_argument("--impala-channels", default=None, help="e.g. 32,64,64 (the paper's); default: the agent's")
    parser.add_argument("--out", default="benchmark/results/update_profile.json")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_update.py needs a CUDA device")
    device = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "latency_ms": {}, "profile": {}, "errors": {}}
    for name in opts.agents.split(","):
        module, flags = AGENTS[name]
        agent = importlib.import_module(module)
        if opts.impala_channels:
            flags = {**flags, "impala_channels": tuple(int(c) for c in opts.impala_channels.split(","))}
        args = agent.Args(env_id="Pong", buffer_size=100_000, device="cuda", compile=True, cudagraphs=True,
                          torch_deterministic=False, **flags)
        for variant in opts.variants.split(","):
            key = f"{name}/{variant}"
            try:
                start = time.time()
                step, q_net, calls = build_update(agent, args, variant, device)
                for _ in range(10 - calls):  # compilation, capture, cudnn autotuning: 10 calls in every variant
                    step()
                ms = timed(step, device, opts.repeats)
                checksum = params_checksum(q_net)
                results["latency_ms"][key] = {"median": statistics.median(ms), "p10": sorted(ms)[len(ms) // 10],
                                              "build_s": round(time.time() - start, 1), "params_checksum": checksum}
                print(f"{name:8s} {variant:13s} update {statistics.median(ms):.3f} ms "
                      f"(built in {time.time() - start:.0f} s; parameters after {10 + opts.repeats} updates: "
                      f"checksum {checksum!r})", flush=True)
                if variant == "fast":
                    table = kernel_table(step, device, opts.profile_calls)
                    results["profile"][name] = table
                    print(f"  {table['kernels_per_update']:.0f} kernels, {table['kernel_us_total']:.0f} us of GPU time per update")
                    for kind, v in table["by_kind"].items():
                        print(f"  {kind:18s} {v['us']:8.1f} us  {v['kernels']:5.1f} kernels")
                    for k in table["kernels"][:25]:
                        print(f"    {k['us_per_update']:7.1f} us x{k['launches_per_update']:4.1f}  {k['kind']:16s} {k['name'][:90]}")
            except Exception:  # one variant failing must not lose the others
                results["errors"][key] = traceback.format_exc(limit=3)
                print(f"{name:8s} {variant:13s} FAILED\n{results['errors'][key]}", flush=True)
            torch._dynamo.reset()
            with open(opts.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
