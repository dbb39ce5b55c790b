"""The Triton 3x3 convolutions of the `conv_kernels` block, run by Triton's interpreter on the CPU
(TRITON_INTERPRET=1, which must be set before the agent file is imported: each check runs in a
fresh interpreter). Against F.conv2d: forward, data gradient, weight and bias gradients, for the
channel counts that take each path through the kernels, both weight layouts, and several
programs' partial sums; the custom operators' registration (torch.library.opcheck: fake shapes
and strides, autograd); the Impala encoder with and without the kernels."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import dqn_moe_atari as dqn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("triton") is None:
    if os.environ.get("MOE_RL_REQUIRE_TRITON"):
        raise RuntimeError("MOE_RL_REQUIRE_TRITON is set but Triton is not installed (pip install triton==3.6.0)")
    pytest.skip("Triton is not installed: its interpreter runs these checks on the CPU", allow_module_level=True)

PRELUDE = """
import json, sys
import torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, {root!r})
import dqn_moe_atari as dqn
torch.manual_seed(0)
def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
"""


def interpreted(code: str) -> dict:
    """Run `code` (after PRELUDE) under Triton's interpreter; it prints one JSON object."""
    proc = subprocess.run([sys.executable, "-c", PRELUDE.format(root=ROOT) + code], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernels_compute_the_convolution_and_its_gradients():
    """y, dx, dw, db equal F.conv2d's (float32 sums; the interpreter has no TF32) for inputs of 4
    channels (K chunks across taps), 16 and 32 (a tap per chunk), 3 and 8 (padded to 16), uneven
    pixel counts, contiguous and channels-last weights, with and without the ReLU of the input
    fused in (its gradient masks dx); dw keeps the weight's layout. The weight
    gradient is split over several programs and steps, its K chunks over one or two programs
    (the encoder test below takes the default split), and summed in several steps."""
    out = interpreted("""
dqn.WGRAD_BLOCK_M, dqn.WGRAD_PROGRAMS, dqn.WGRAD_SUM_BLOCK, dqn.WGRAD_SUM_COLUMNS = 16, 3, 2, 64
res = []
for n, cin, cout, h, w in [(2, 4, 16, 9, 10), (2, 16, 32, 7, 5), (1, 32, 16, 5, 6), (1, 3, 8, 4, 4), (3, 8, 32, 6, 3)]:
    for fmt in (torch.contiguous_format, torch.channels_last):
        dqn.WGRAD_K_SPLIT = 1 if fmt is torch.contiguous_format else 2  # all chunks in one program; split unevenly
        x = torch.randn(n, cin, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
        wt = torch.randn(cout, cin, 3, 3).contiguous(memory_format=fmt).requires_grad_()
        b = torch.randn(cout, requires_grad=True)
        dy = torch.randn(n, cout, h, w)
        relu = fmt is torch.channels_last  # the ReLU before the convolution, fused into the kernels
        y = dqn.conv3x3_same(x, wt, b, relu)
        y.backward(dy)
        got = [y, x.grad, wt.grad, b.grad]
        layout_kept = wt.grad.stride() == wt.stride() and y.is_contiguous(memory_format=torch.channels_last)
        x.grad = wt.grad = b.grad = None
        ref = F.conv2d(F.relu(x) if relu else x, wt, b, padding=1)
        ref.backward(dy)
        res.append({"shape": [n, cin, cout, h, w], "layout_kept": layout_kept,
                    "err": [rel(a, r) for a, r in zip(got, [ref, x.grad, wt.grad, b.grad])]})
print(json.dumps(res))
""")
    assert len(out) == 10
    for case in out:
        assert case["layout_kept"], case
        assert max(case["err"]) < 1e-5, case



def test_max_pool_kernels_compute_the_pool_and_its_gradient():
    """The 3x3 stride-2 'SAME' max-pool and its gradient equal the -inf padded F.max_pool2d's, for
    even sides (padding after only), odd ones (both sides), non-square maps and one channel; and on
    integer-valued inputs, where windows tie, the gradient goes to the same (first) maximum."""
    out = interpreted("""
dqn.POOL_BLOCK = 256
res = []
for n, c, h, w, ties in [(2, 16, 12, 12, False), (2, 32, 21, 21, False), (1, 8, 11, 6, False), (3, 1, 5, 8, False),
                         (2, 16, 10, 10, True)]:
    x = torch.randn(n, c, h, w)
    x = (x * 2).round() if ties else x
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn(n, c, -(-h // 2), -(-w // 2))
    got = []
    for on in (True, False):
        dqn.configure_backends("cpu", True, triton_convs=on)
        y = dqn.max_pool_same(x)
        y.backward(dy)
        got.append((y.detach(), x.grad))
        x.grad = None
    (y1, g1), (y0, g0) = got
    res.append({"shape": [n, c, h, w], "ties": ties, "channels_last": y1.is_contiguous(memory_format=torch.channels_last),
                "y_equal": bool(torch.equal(y1, y0)), "grad_err": rel(g1, g0)})
print(json.dumps(res))
""")
    assert len(out) == 5
    for case in out:
        assert case["y_equal"] and case["channels_last"], case
        assert case["grad_err"] < 1e-6, case


def test_custom_operators_pass_opcheck():
    """torch.library.opcheck on both operators: the schema, the fake implementations' shapes and
    strides (what torch.compile plans with) against the real ones, and the autograd registration."""
    out = interpreted("""
x = torch.randn(2, 16, 5, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
w = torch.randn(16, 16, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
b = torch.randn(16, requires_grad=True)
dy = torch.randn(2, 16, 5, 4).contiguous(memory_format=torch.channels_last)
checks = ("test_schema", "test_faketensor", "test_autograd_registration")
r1 = torch.library.opcheck(dqn.conv3x3_same, (x, w, b, True), test_utils=checks)
r2 = torch.library.opcheck(dqn.conv3x3_backward, (x.detach(), w.detach(), dy, True, True), test_utils=checks[:2])
xp = torch.randn(2, 16, 9, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
r3 = torch.library.opcheck(dqn.max_pool3x3_same, (xp,), test_utils=checks)
y, arg = dqn.max_pool3x3_same(xp.detach())
r4 = torch.library.opcheck(dqn.max_pool3x3_backward, (torch.randn_like(y), arg, 9, 6), test_utils=checks[:2])
print(json.dumps({"forward": r1, "backward": r2, "pool": r3, "pool_backward": r4}))
""")
    for op in ("forward", "backward", "pool", "pool_backward"):
        assert out[op] and all(v == "SUCCESS" for v in out[op].values()), out


def test_impala_encoder_with_kernels_equals_cudnn_path():
    """The Impala encoder (16-32-32, the default) with the kernels switched on through
    configure_backends gives the same features and parameter gradients as with nn.Conv2d. The
    final sum of the weight gradient takes wide tiles: the interpreter runs a program per 16
    columns in minutes (the default tile is checked in the block-size test below)."""
    out = interpreted("""
import copy
dqn.WGRAD_SUM_BLOCK, dqn.WGRAD_SUM_COLUMNS = 16, 512
net = nn.Sequential(*dqn.encoder_stages("impala", 4, (16, 32, 32)))
obs = torch.rand(2, 4, 20, 20)
results = []
for on in (False, True):
    dqn.configure_backends("cpu", True, triton_convs=on)
    copy_ = copy.deepcopy(net)
    feats = copy_(obs)
    feats.square().sum().backward()
    results.append((dqn.CONV_KERNELS["on"], feats, [p.grad for p in copy_.parameters()]))
(off, f0, g0), (on, f1, g1) = results
print(json.dumps({"off": off, "on": on, "feat_err": rel(f1, f0), "grad_err": max(rel(a, b) for a, b in zip(g1, g0)),
                  "grads": len(g0)}))
""")
    assert out["on"] and not out["off"]
    assert out["grads"] == 30  # 15 convolutions, weight and bias each
    assert out["feat_err"] < 1e-5 and out["grad_err"] < 1e-5, out


def test_kernels_stay_off_where_they_cannot_run():
    """Without the interpreter the CPU keeps nn.Conv2d (the CPU runs stay bit-exact), and a run
    on CUDA keeps it for CPU tensors (the networks' shape probe at construction)."""
    saved = dict(dqn.CONV_KERNELS)
    try:
        conv = dqn.SameConv2d(16, 16, 3)
        x = dqn.torch.rand(1, 16, 5, 5)
        if os.environ.get("TRITON_INTERPRET") != "1":
            dqn.configure_backends("cpu", True, triton_convs=True)
            assert not dqn.CONV_KERNELS["on"]
        dqn.CONV_KERNELS.update(on=True, on_cpu=False)  # what configure_backends("cuda", ..., True) sets
        assert not dqn.conv_kernel_applies(conv, x)
        dqn.CONV_KERNELS.update(on_cpu=True)
        assert dqn.conv_kernel_applies(conv, x)
        assert not dqn.conv_kernel_applies(dqn.SameConv2d(16, 16, 4), x)  # appendix D's 4x4 filters: cuDNN
        assert not dqn.conv_kernel_applies(dqn.SameConv2d(32, 64, 3), dqn.torch.rand(1, 32, 5, 5))  # wide: cuDNN
        assert not dqn.conv_kernel_applies(dqn.SameConv2d(4, 32, 8, 4), dqn.torch.rand(1, 4, 84, 84))  # Nature CNN
    finally:
        dqn.CONV_KERNELS.update(saved)


def test_kernels_need_an_ampere_or_newer_gpu(monkeypatch):
    """Compute capability 8.0 or newer (TF32, enough shared memory); a T4 or V100 keeps cuDNN."""
    for capability, expected in (((7, 5), False), ((7, 0), False), ((8, 0), True), ((8, 6), True), ((9, 0), True)):
        monkeypatch.setattr(dqn.torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert dqn.triton_convs_available("cuda") is expected, capability


def test_every_weight_gradient_size_of_the_sweep_is_correct():
    """benchmark/conv_kernels.py --wgrad-sizes: each block size and final-sum tile it tries gives
    the weight gradient (error against float64 at the interpreter's float32 level), and the
    module's constants are back afterwards (timing stubbed: the interpreter has no CUDA graphs)."""
    out = interpreted("""
sys.path.insert(0, sys.path[0] + "/benchmark")  # PRELUDE put the repository first
import conv_kernels
conv_kernels.graph_us = lambda fn: 1.0
before = (dqn.WGRAD_K_SPLIT, dqn.WGRAD_BLOCK_M, dqn.WGRAD_PROGRAMS, dqn.WGRAD_SUM_BLOCK, dqn.WGRAD_SUM_COLUMNS)
row = conv_kernels.wgrad_sizes(16, 16, 5, 2, "cpu")  # the interpreter runs one program per 16 columns of dw
after = (dqn.WGRAD_K_SPLIT, dqn.WGRAD_BLOCK_M, dqn.WGRAD_PROGRAMS, dqn.WGRAD_SUM_BLOCK, dqn.WGRAD_SUM_COLUMNS)
print(json.dumps({"errors": [e for _, e in row["main"].values()], "sum_errors": [e for _, e in row["sum"].values()],
                  "restored": before == after}))
""")
    assert len(out["errors"]) == 18 and len(out["sum_errors"]) == 5 and out["restored"], out
    assert max(out["errors"] + out["sum_errors"]) < 1e-6, out
