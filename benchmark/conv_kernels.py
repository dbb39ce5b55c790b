"""The agents' Triton 3x3 convolutions (the `conv_kernels` block) against cuDNN, layer by layer:
forward, data gradient and weight + bias gradient of every 3x3 convolution shape of the Impala
encoder at batch 32, channels-last, TF32 (the agents' fast path). Each is timed as the median of
30 replays of a CUDA graph holding 20 calls, and checked against float64 on the CPU
(||out - ref|| / ||ref||) next to cuDNN's own error on the same inputs.

    python benchmark/conv_kernels.py --out benchmark/results/conv_kernels.json
    python benchmark/conv_kernels.py --impala-channels 32,64,64
    python benchmark/conv_kernels.py --wgrad-sizes --out benchmark/results/wgrad_sizes.json

--wgrad-sizes instead times the weight gradient under each block size of the block's constants
(K split, pixels per step, programs; then the final sum's tiles for the best of those), shape by
shape, and the encoder's total under each uniform choice: how WGRAD_* were chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dqn_moe_atari as agent  # noqa: E402  (the block is the same in every agent file)
from bench_atari import timed  # noqa: E402


def layer_shapes(channels: tuple[int, ...], size: int = 84) -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, side, how many per network) of each Impala stack's 3x3 convs:
    the stack's first conv at its input size, then four in its residual blocks after the pool."""
    shapes, cin = [], 4
    for cout in channels:
        shapes.append((cin, cout, size, 1))
        size = -(-size // 2)
        shapes.append((cout, cout, size, 4))
        cin = cout
    return shapes


def graph_us(fn, calls: int = 20, replays: int = 30) -> float:
    """Median us per call of fn, from replays of a CUDA graph that holds `calls` calls."""
    step = agent.CapturedStep(lambda: [fn() for _ in range(calls)], enabled=True)
    for _ in range(5):  # eager warm-up calls, then the capture
        step()
    return 1e3 * statistics.median(timed(step, torch.device("cuda"), replays)) / calls


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


def measure(cin: int, cout: int, side: int, batch: int, device) -> dict:
    x = torch.randn(batch, cin, side, side, device=device).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(cout, cin, 3, 3, device=device) / (3 * cin**0.5)).contiguous(memory_format=torch.channels_last)
    b = torch.randn(cout, device=device)
    dy = torch.randn(batch, cout, side, side, device=device).contiguous(memory_format=torch.channels_last)
    backward = torch.ops.aten.convolution_backward
    conv_args = ([cout], [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    cudnn = {"forward": lambda: F.conv2d(x, w, b, padding=1),
             "data_grad": lambda: backward(dy, x, w, *conv_args, [True, False, False])[0],
             "weight_grad": lambda: backward(dy, x, w, *conv_args, [False, True, True])[1:]}
    triton = {"forward": lambda: agent._conv3x3(x, w, b),
              "data_grad": lambda: agent._conv3x3(dy, w, None, data_grad=True),
              "weight_grad": lambda: agent._conv3x3_weight_grad(x, dy, w)}
    xr, wr, br, dyr = (t.double().cpu() for t in (x, w, b, dy))
    reference = {"forward": [F.conv2d(xr, wr, br, padding=1)],
                 "data_grad": [torch.nn.grad.conv2d_input(xr.shape, wr, dyr, padding=1)],
                 "weight_grad": [torch.nn.grad.conv2d_weight(xr, wr.shape, dyr, padding=1), dyr.sum((0, 2, 3))]}
    row = {"cin": cin, "cout": cout, "side": side}
    for part in cudnn:
        outs = {name: fns[part]() for name, fns in (("cudnn", cudnn), ("triton", triton))}
        for name, out in outs.items():
            out = out if isinstance(out, (tuple, list)) else [out]
            row[f"{name}_{part}_err"] = max(rel_err(o, r) for o, r in zip(out, reference[part]))
        row[f"cudnn_{part}_us"] = graph_us(cudnn[part])
        row[f"triton_{part}_us"] = graph_us(triton[part])
    return row


def wgrad_sizes(cin: int, cout: int, side: int, batch: int, device) -> dict:
    """(us, error against float64) per weight gradient under each (WGRAD_K_SPLIT, WGRAD_BLOCK_M,
    WGRAD_PROGRAMS) with the final sum at 256 x 16, then under each final-sum tile
    (WGRAD_SUM_BLOCK, WGRAD_SUM_COLUMNS) with the best of those; the module's constants are
    restored afterwards."""
    x = torch.randn(batch, cin, side, side, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(batch, cout, side, side, device=device).contiguous(memory_format=torch.channels_last)
    reference = torch.nn.grad.conv2d_weight(x.double().cpu(), w.shape, dy.double().cpu(), padding=1)
    names = ("WGRAD_K_SPLIT", "WGRAD_BLOCK_M", "WGRAD_PROGRAMS", "WGRAD_SUM_BLOCK", "WGRAD_SUM_COLUMNS")
    saved = {n: getattr(agent, n) for n in names}

    def timed_with(**sizes) -> tuple[float, float]:
        """(us per call, relative error against float64) with these sizes."""
        for n, v in sizes.items():
            setattr(agent, n, v)
        err = rel_err(agent._conv3x3_weight_grad(x, dy, w)[0], reference)
        return graph_us(lambda: agent._conv3x3_weight_grad(x, dy, w)), err

    row = {"cin": cin, "cout": cout, "side": side, "main": {}, "sum": {}}
    try:
        for split in (1, 3, 9):
            for block_m in (64, 128):
                for programs in (132, 264, 528):
                    row["main"][f"{split}/{block_m}/{programs}"] = timed_with(
                        WGRAD_K_SPLIT=split, WGRAD_BLOCK_M=block_m, WGRAD_PROGRAMS=programs,
                        WGRAD_SUM_BLOCK=256, WGRAD_SUM_COLUMNS=16)
        best = min(row["main"], key=lambda k: row["main"][k][0])
        split, block_m, programs = map(int, best.split("/"))
        for rows, columns in ((256, 16), (128, 16), (512, 8), (64, 32), (32, 128)):
            row["sum"][f"{rows}/{columns}"] = timed_with(WGRAD_K_SPLIT=split, WGRAD_BLOCK_M=block_m, WGRAD_PROGRAMS=programs,
                                                         WGRAD_SUM_BLOCK=rows, WGRAD_SUM_COLUMNS=columns)
    finally:
        for n, v in saved.items():
            setattr(agent, n, v)
    return row


def sweep_wgrad_sizes(channels, batch: int, device, results: dict) -> None:
    for cin, cout, side, count in layer_shapes(channels):
        row = {**wgrad_sizes(cin, cout, side, batch, device), "per_network": count}
        results["layers"].append(row)
        top = sorted(row["main"], key=lambda k: row["main"][k][0])[:4]
        print(f"{cin}->{cout} at {side}x{side} (x{count}): split/pixels/programs " + ", ".join(
            f"{k} {row['main'][k][0]:.1f} us" for k in top) + " | final sum rows/columns " + ", ".join(
            f"{k} {us:.1f}" for k, (us, _) in row["sum"].items()), flush=True)
    totals = {k: sum(r["main"][k][0] * r["per_network"] for r in results["layers"]) for k in results["layers"][0]["main"]}
    results["per_network_total_us"] = totals
    print("per network, each uniform choice (us):", {k: round(totals[k], 1) for k in sorted(totals, key=totals.get)[:6]})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impala-channels", default="16,32,32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="benchmark/results/conv_kernels.json")
    parser.add_argument("--wgrad-sizes", action="store_true", help="sweep the weight gradient's block sizes instead")
    opts = parser.parse_args()
    if not torch.cuda.is_available() or agent.triton is None:
        sys.exit("error: conv_kernels.py needs a CUDA device and Triton")
    device = torch.device("cuda")
    agent.configure_backends(device, deterministic=False)  # cuDNN autotuning and TF32, as the fast path
    channels = tuple(int(c) for c in opts.impala_channels.split(","))
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": agent.triton.__version__,
               "date": time.strftime("%Y-%m-%d"), "batch": opts.batch, "impala_channels": channels, "layers": []}
    if opts.wgrad_sizes:
        sweep_wgrad_sizes(channels, opts.batch, device, results)
        return write(results, opts.out)
    print("| conv | per network | part | cuDNN us | Triton us | cuDNN error | Triton error |\n|---|---|---|---|---|---|---|")
    for cin, cout, side, count in layer_shapes(channels):
        row = {**measure(cin, cout, side, opts.batch, device), "per_network": count}
        results["layers"].append(row)
        for part in ("forward", "data_grad", "weight_grad"):
            print(f"| {cin}->{cout} at {side}x{side} | {count} | {part} | {row[f'cudnn_{part}_us']:.1f} | "
                  f"{row[f'triton_{part}_us']:.1f} | {row[f'cudnn_{part}_err']:.1e} | {row[f'triton_{part}_err']:.1e} |", flush=True)
    needed = lambda r, part: part != "data_grad" or r["cin"] != 4  # noqa: E731  (no gradient for the frames)
    totals = {f"{name}_{part}_us": sum(r[f"{name}_{part}_us"] * r["per_network"] for r in results["layers"] if needed(r, part))
              for name in ("cudnn", "triton") for part in ("forward", "data_grad", "weight_grad")}
    results["per_network_total_us"] = totals
    print("per network, summed over its 15 convolutions (us):", json.dumps({k: round(v, 1) for k, v in totals.items()}))
    write(results, opts.out)


def write(results: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
