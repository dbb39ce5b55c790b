"""Soft MoE, Top1-MoE, auxiliary losses, parameter counts and the network variants of
dqn_moe_atari.py, each checked against a direct (slow) computation of its definition."""

import math

import pytest
import torch

import dqn_moe_atari as dqn

TRUNC2_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


def randomize_biases_(module, seed=0):
    """Biases initialise to zero; give them values so the references exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.split(".")[-1] in ("b1", "b2"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def expert_ref(experts, e, v):
    """f_e(v) = relu(v w1[e] + b1[e]) w2[e] + b2[e] for one vector, in float64."""
    w1, b1, w2, b2 = (t[e].detach().double() for t in (experts.w1, experts.b1, experts.w2, experts.b2))
    return torch.relu(v @ w1 + b1) @ w2 + b2


def soft_moe_ref(moe, x, phi=None):
    """Puigcerver et al. (2023) section 2.2 with explicit loops, float64.
    normalize: logits from l2-normalised tokens and scale * l2-normalised Phi columns."""
    router = moe.router
    B, m, d = x.shape
    E, p = moe.num_experts, moe.slots
    n = E * p
    phi = (router.phi if phi is None else phi).detach().double().reshape(d, n)  # expert-major columns
    x = x.double()
    out = torch.zeros(B, m, d, dtype=torch.float64)
    for b in range(B):
        X, Phi = x[b], phi
        if router.normalize:
            Xl = torch.stack([X[i] / (X[i].norm() + 1e-6) for i in range(m)])
            Phi = torch.stack([Phi[:, j] / (Phi[:, j].norm() + 1e-6) for j in range(n)], dim=1)
            Phi = router.scale.detach().double() * Phi
        else:
            Xl = X
        L = Xl @ Phi  # (m, n)
        expL = torch.exp(L)
        D = torch.zeros(m, n, dtype=torch.float64)
        C = torch.zeros(m, n, dtype=torch.float64)
        for i in range(m):
            for j in range(n):
                D[i, j] = expL[i, j] / expL[:, j].sum()
                C[i, j] = expL[i, j] / expL[i, :].sum()
        slots_in = torch.zeros(n, d, dtype=torch.float64)
        for j in range(n):
            for i in range(m):
                slots_in[j] += D[i, j] * X[i]
        slots_out = torch.stack([expert_ref(moe.experts, j // p, slots_in[j]) for j in range(n)])
        for i in range(m):
            for j in range(n):
                out[b, i] += C[i, j] * slots_out[j]
    return out


# ------------------------------------------------------------------------------------------
# Soft MoE
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m, d, E, cf", [(7, 5, 3, 1.0), (6, 4, 2, 0.5), (5, 3, 4, 2.0), (4, 6, 1, 1.0)])
def test_soft_moe_matches_paper_equations(m, d, E, cf):
    """SoftMoE.forward equals D = softmax over tokens, X~ = D^T X, Y~_i = f_{i//p}(X~_i),
    C = softmax over slots, Y = C Y~; dispatch/combine in aux are D and C."""
    torch.manual_seed(0)
    moe = dqn.SoftMoE(d, m, E, expert_hidden=4, capacity_factor=cf)
    randomize_biases_(moe)
    x = torch.randn(2, m, d)
    y, aux = moe(x)
    assert y.shape == (2, m, d)
    torch.testing.assert_close(y.double(), soft_moe_ref(moe, x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(aux["dispatch"].sum(dim=1), torch.ones(2, E * moe.slots))
    assert torch.allclose(aux["combine"].sum(dim=2), torch.ones(2, m))


def test_float64_moe_routes_in_float64():
    """A float64 Soft MoE or Top1-MoE (the official-equivalence probe runs one) keeps its
    routing softmaxes in float64: it meets the float64 reference far inside float32's rounding."""
    torch.manual_seed(0)
    soft = dqn.SoftMoE(5, 7, 3, expert_hidden=4).double()
    top1 = dqn.Top1MoE(5, 12, 3, expert_hidden=6).double()
    randomize_biases_(soft)
    randomize_biases_(top1)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    y, aux = soft(x)
    assert aux["dispatch"].dtype == torch.float64
    torch.testing.assert_close(y, soft_moe_ref(soft, x), rtol=1e-12, atol=1e-12)
    x = torch.randn(3, 12, 5, dtype=torch.float64)
    y, aux = top1(x)
    assert aux["probs"].dtype == torch.float64
    torch.testing.assert_close(y, top1_ref(top1, x)[0], rtol=1e-12, atol=1e-12)


def test_soft_moe_normalized_matches_reference():
    """normalize=True: logits from x/||x|| and scale*phi/||phi|| (over d), slot inputs from the
    raw x; the learned scale (set away from 1) multiplies the logits."""
    torch.manual_seed(1)
    moe = dqn.SoftMoE(5, 6, 3, expert_hidden=4, normalize=True)
    randomize_biases_(moe)
    with torch.no_grad():
        moe.router.scale.fill_(2.5)
    x = 3.0 * torch.randn(2, 6, 5)  # far from unit norm, so a missing normalisation shows
    y, _ = moe(x)
    torch.testing.assert_close(y.double(), soft_moe_ref(moe, x), rtol=1e-5, atol=1e-5)
    # the logits are scale-invariant in x, so the routing of 10x is the routing of x
    _, a1 = moe(x)
    _, a10 = moe(10 * x)
    torch.testing.assert_close(a1["combine"], a10["combine"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m, E, cf, slots", [(121, 1, 1.0, 121), (121, 2, 1.0, 61), (121, 4, 1.0, 31),
                                             (121, 8, 1.0, 16), (121, 8, 2.0, 31), (121, 4, 0.5, 16),
                                             (32, 8, 1.0, 4)])
def test_soft_moe_slot_count(m, E, cf, slots):
    """p = ceil(m * capacity_factor / E); Phi has shape (d, E, p)."""
    moe = dqn.SoftMoE(3, m, E, expert_hidden=2, capacity_factor=cf)
    assert moe.slots == slots == math.ceil(m * cf / E)
    assert moe.router.phi.shape == (3, E, slots)
    _, aux = moe(torch.randn(1, m, 3))
    assert aux["dispatch"].shape == (1, m, E * slots)


def test_soft_moe_random_phi():
    """random_phi=True: no learned phi, finite outputs, different outputs for two calls on the
    same input and for two identical samples in one batch (Phi drawn per sample)."""
    torch.manual_seed(0)
    moe = dqn.SoftMoE(4, 6, 2, expert_hidden=8, random_phi=True)
    randomize_biases_(moe)
    assert moe.router.phi is None
    assert not any("phi" in name for name, _ in moe.named_parameters())
    x = torch.randn(1, 6, 4).repeat(2, 1, 1)
    y1, _ = moe(x)
    y2, _ = moe(x)
    assert torch.isfinite(y1).all() and torch.isfinite(y2).all()
    assert not torch.allclose(y1, y2, atol=1e-4)
    assert not torch.allclose(y1[0], y1[1], atol=1e-4)


def test_soft_phi_init_lecun_normal():
    """Phi ~ lecun_normal with fan_in = d * E: std 1/sqrt(d*E), truncated at 2 / 0.8796 std."""
    torch.manual_seed(0)
    d, E, p = 64, 8, 64
    phi = dqn.SoftRouter(d, E, p).phi.detach()
    std = 1 / math.sqrt(d * E)
    assert abs(phi.std().item() / std - 1) < 0.05
    assert phi.abs().max() <= 2 * std / TRUNC2_STD + 1e-7


def test_top1_router_init_lecun_normal():
    """The Top1 router kernel is lecun_normal with fan_in = d."""
    torch.manual_seed(0)
    w = dqn.Top1MoE(256, 8, 16, expert_hidden=2).router.weight.detach()
    std = 1 / math.sqrt(256)
    assert abs(w.std().item() / std - 1) < 0.05
    assert w.abs().max() <= 2 * std / TRUNC2_STD + 1e-7


# ------------------------------------------------------------------------------------------
# Top1-MoE
# ------------------------------------------------------------------------------------------
def top1_ref(moe, x):
    """Router softmax(x W^T); token -> argmax expert with gate = max prob; each expert takes
    the first C tokens in index order, the rest output 0; kept = gate * f_e(x)."""
    B, m, d = x.shape
    W = moe.router.weight.detach().double()
    y = torch.zeros(B, m, d, dtype=torch.float64)
    kept = torch.zeros(B, m)
    for b in range(B):
        taken = [0] * moe.num_experts
        for t in range(m):
            probs = torch.softmax(x[b, t].double() @ W.T, dim=0)
            e = int(probs.argmax())
            if taken[e] < moe.capacity:
                taken[e] += 1
                kept[b, t] = 1
                y[b, t] = probs[e] * expert_ref(moe.experts, e, x[b, t].double())
    return y, kept


def test_top1_matches_reference_random_router():
    """Top1MoE equals the direct computation for a random router (some drops likely)."""
    torch.manual_seed(0)
    moe = dqn.Top1MoE(5, 12, 3, expert_hidden=6, capacity_factor=1.0)
    randomize_biases_(moe)
    assert moe.capacity == 4
    x = torch.randn(3, 12, 5)
    y, aux = moe(x)
    y_ref, kept_ref = top1_ref(moe, x)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(aux["kept"], kept_ref)


def test_top1_overflow_drops_later_tokens():
    """When every token picks expert 0, only the first C = ceil(m*cf/E) tokens are processed
    (gate * f_0(x)); the later ones output exactly zero and have kept = 0."""
    torch.manual_seed(0)
    m, d, E, cf = 10, 4, 3, 0.6
    moe = dqn.Top1MoE(d, m, E, expert_hidden=5, capacity_factor=cf)
    randomize_biases_(moe)
    C = math.ceil(m * cf / E)
    assert moe.capacity == C == 2
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 3.0
    x = torch.randn(2, m, d)
    x[..., 0] = x[..., 0].abs() + 0.5  # positive feature 0: expert 0's logit is the largest
    y, aux = moe(x)
    assert torch.all(aux["choice"] == 0)
    assert torch.all(y[:, C:] == 0)
    assert torch.equal(aux["kept"], torch.tensor([[1.0] * C + [0.0] * (m - C)] * 2))
    y_ref, _ = top1_ref(moe, x)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    gate = torch.exp(3 * x[:, :C, 0]) / (torch.exp(3 * x[:, :C, 0]) + (E - 1))
    torch.testing.assert_close(aux["probs"].max(dim=-1).values[:, :C], gate)
    assert (y[:, :C].abs().sum(-1) > 0).all()


# ------------------------------------------------------------------------------------------
# auxiliary losses
# ------------------------------------------------------------------------------------------
def cv_sq(values):
    """(population std / (mean + 1e-6))^2 of a list of floats."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return var / (mean + 1e-6) ** 2


def test_importance_loss_matches_reference():
    """importance = per-sample sum over tokens of router probs; loss = batch mean of CV^2."""
    torch.manual_seed(0)
    probs = torch.randn(3, 6, 4).softmax(-1)
    ref = sum(cv_sq([probs[b, :, e].sum().item() for e in range(4)]) for b in range(3)) / 3
    assert dqn.importance_loss(probs).item() == pytest.approx(ref, rel=1e-5)


def test_importance_loss_extremes():
    """Equal importance gives 0; all mass on one of E experts gives CV^2 = E - 1."""
    uniform = torch.full((2, 5, 4), 0.25)
    assert dqn.importance_loss(uniform).item() == pytest.approx(0.0, abs=1e-10)
    swapped = torch.tensor([[[0.9, 0.1], [0.1, 0.9]]])  # tokens differ, sums are equal
    assert dqn.importance_loss(swapped).item() == pytest.approx(0.0, abs=1e-10)
    onehot = torch.zeros(2, 5, 4)
    onehot[..., 0] = 1
    assert dqn.importance_loss(onehot).item() == pytest.approx(3.0, rel=1e-5)


def test_load_loss_matches_reference():
    """P[t,e] = 1 - Phi((max_e' noisy[t,e'] - logits[t,e]) / std) with the same noise draw;
    loss = batch mean of CV^2 of P averaged over tokens."""
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 4)
    std = 0.25
    torch.manual_seed(123)
    loss = dqn.load_loss(logits, std).item()
    torch.manual_seed(123)
    noisy = logits + torch.randn_like(logits) * std

    def ncdf(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    ref = 0.0
    for b in range(3):
        load = [0.0] * 4
        for t in range(7):
            thr = noisy[b, t].max().item()
            for e in range(4):
                load[e] += (1 - ncdf((thr - logits[b, t, e].item()) / std)) / 7
        ref += cv_sq(load) / 3
    assert loss == pytest.approx(ref, rel=1e-4)


def test_load_loss_penalises_collapsed_router():
    """A router sending every token to expert 0 has a much larger load loss than a balanced one."""
    E, m = 4, 64
    collapsed = torch.zeros(2, m, E)
    collapsed[..., 0] = 5.0
    balanced = torch.zeros(2, m, E)
    for t in range(m):
        balanced[:, t, t % E] = 5.0
    torch.manual_seed(0)
    lc = dqn.load_loss(collapsed, 1 / E).item()
    torch.manual_seed(0)
    lb = dqn.load_loss(balanced, 1 / E).item()
    assert lc > 2.0 and lb < 0.1  # ~E-1 and ~0 (up to the noise of one draw)


# ------------------------------------------------------------------------------------------
# parameter counts (11x11 feature map of d = 8 channels: 121 tokens)
# ------------------------------------------------------------------------------------------
def small_net(**kw):
    args = dqn.Args(impala_channels=(4, 8, 8), **kw)
    dqn.validate_args(args)
    return dqn.QNetwork(args, num_actions=6)


def numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("N", [2, 4, 8])
@pytest.mark.parametrize("moe", ["soft", "top1"])
def test_moe_param_counts(moe, N):
    """N experts have exactly N times one expert's parameters; Soft MoE's phi has d*N*p
    entries (p = ceil(121/N)); Top1's router has d*N; the head reads 121*d features."""
    d, m, h = 8, 121, 512
    one = small_net(moe=moe, num_experts=1)
    many = small_net(moe=moe, num_experts=N)
    per_expert = d * h + h + h * d + d
    assert numel(one.torso.moe.experts) == per_expert
    assert numel(many.torso.moe.experts) == N * per_expert
    if moe == "soft":
        assert many.torso.moe.router.phi.numel() == d * N * math.ceil(m / N)
        assert numel(many.torso.moe.router) == d * N * math.ceil(m / N)
    else:
        assert numel(many.torso.moe.router) == d * N
    assert many.head.in_features == m * d
    assert numel(many) - numel(many.torso.moe) == numel(one) - numel(one.torso.moe)  # same encoder + head


@pytest.mark.parametrize("N", [1, 4])
def test_baseline_scale_hidden(N):
    """moe=none with scale_hidden: one dense layer of width 512*N on the 121*d flat tokens
    (in*512N weights + 512N biases); the head reads 512*N features. Without it: 512."""
    net = small_net(moe="none", num_experts=N, scale_hidden=True)
    dense = net.torso.moe.dense
    assert dense.weight.shape == (512 * N, 121 * 8)
    assert numel(net.torso.moe) == 121 * 8 * 512 * N + 512 * N
    assert net.head.in_features == 512 * N
    plain = small_net(moe="none", num_experts=N)
    assert plain.head.in_features == 512
    assert numel(plain.torso.moe) == 121 * 8 * 512 + 512


@pytest.mark.parametrize("moe", ["soft", "top1"])
def test_expert_hidden_divisor(moe):
    """expert_hidden_divisor divides each expert's hidden width by the number of experts."""
    net = small_net(moe=moe, num_experts=4, expert_hidden_divisor=True)
    ex = net.torso.moe.experts
    assert ex.w1.shape == (4, 8, 128) and ex.w2.shape == (4, 128, 8)
    assert ex.b1.shape == (4, 128)


@pytest.mark.parametrize("E, slots", [(2, 59 * 59), (8, 29 * 29)])
def test_big_variant_slots(E, slots):
    """big + PerConv: 7056 pixel tokens of 4 values, p = floor(sqrt(ceil(7056/E)))^2 slots,
    each expert seeing a sqrt(p) x sqrt(p) x 4 image."""
    moe = dqn.BigSoftMoE((4, 84, 84), "conv", E, 2, 1.0,
                         lambda c: dqn.encoder_stages("impala", c, (1, 1, 1)))
    side = math.isqrt(math.ceil(7056 / E))
    assert moe.slots == side * side == slots
    assert moe.image == (4, side, side)
    assert moe.router.phi.shape == (4, E, slots)


# ------------------------------------------------------------------------------------------
# every network configuration runs forward and backward
# ------------------------------------------------------------------------------------------
CONFIGS = (
    [dict(tokenizer=t, moe=m) for t in ("conv", "feat", "samp") for m in ("none", "soft", "top1")]
    + [dict(tokenizer="samp", moe="soft", moe_variant="all"), dict(tokenizer="samp", moe="soft", moe_variant="all", normalize=True)]
    # big + conv at capacity 0.02: 8x8 expert images, keeps the (7056 x slots) dispatch small
    + [dict(tokenizer="conv", moe="soft", moe_variant="big", capacity_factor=0.02),
       dict(tokenizer="samp", moe="soft", moe_variant="big")]
    + [dict(tokenizer="conv", moe="soft", normalize=True), dict(tokenizer="conv", moe="soft", random_phi=True),
       dict(tokenizer="conv", moe="top1", router_noise=True), dict(encoder="nature", tokenizer="conv", moe="soft")]
)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_forward_backward(cfg):
    """Each tokenizer x MoE kind x variant: Q-values of shape (2, 6), finite, and the gradient
    reaches the routing parameters (phi of every Soft MoE, the Top1 router) and the experts."""
    torch.manual_seed(0)
    cfg = {"impala_channels": (2, 4, 4), "num_experts": 2, "expert_hidden": 8, **cfg}
    if cfg.get("encoder") == "nature":
        cfg.pop("impala_channels")
    args = dqn.Args(**cfg)
    dqn.validate_args(args)
    net = dqn.QNetwork(args, num_actions=6)
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    q, feats, aux = net(obs, with_aux=True)
    assert q.shape == (2, 6) and torch.isfinite(q).all()
    assert feats.shape == (2, net.torso.out_dim) and torch.isfinite(feats).all()
    loss = q.pow(2).sum()
    if args.moe == "top1":
        loss = loss + dqn.importance_loss(aux["probs"]) + dqn.load_loss(aux["logits"], 0.5)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    routers = [p for name, p in net.named_parameters() if name.endswith("phi") or name.endswith("router.weight")]
    if args.moe == "none" or args.random_phi:
        assert not routers
    else:
        expected = 5 if args.moe_variant == "all" else 1  # all: one router per encoder stage, dense layer, head
        assert len(routers) == expected
        for p in routers:
            assert p.grad.abs().sum() > 0
    first_layer = net.torso.moe.dense if args.moe in ("none",) or args.moe_variant == "big" else net.torso.moe.experts
    assert any(p.grad.abs().sum() > 0 for p in first_layer.parameters())
