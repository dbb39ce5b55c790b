"""Unit tests of the Rainbow pieces of rainbow_moe_atari.py, each against a direct (slow)
computation of its definition: the C51 projection, proportional prioritised replay (sampling
frequencies, stratification, importance weights, new-row priority, state round trip), the
dueling / noisy / C51 network, noisy layers, double-DQN targets, the loss and one update."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import rainbow_moe_atari as rb

GAMMA = 0.9


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def project_ref(target_support, probs, v_max):
    """C51 projection with Python loops in float64 (Bellemare et al. 2017, algorithm 1): the
    mass p_j at Tz_j = clip(target, -v_max, v_max) goes to atoms floor(b_j) and ceil(b_j),
    b_j = (Tz_j - v_min) / delta_z, in proportion to the distance to the other one."""
    ts, p = target_support.double().tolist(), probs.double().tolist()
    B, K = len(ts), len(ts[0])
    v_min, dz = -v_max, 2.0 * v_max / (K - 1)
    m = [[0.0] * K for _ in range(B)]
    for b in range(B):
        for j in range(K):
            tz = min(max(ts[b][j], v_min), v_max)
            bj = min(max((tz - v_min) / dz, 0.0), K - 1.0)
            lo, up = math.floor(bj), math.ceil(bj)
            if lo == up:
                m[b][lo] += p[b][j]
            else:
                m[b][lo] += p[b][j] * (up - bj)
                m[b][up] += p[b][j] * (bj - lo)
    return torch.tensor(m, dtype=torch.float64)


def value(row):
    return row % 250 + 1


def frame(row):
    return torch.full((2, 2), value(row), dtype=torch.uint8).numpy()


def fill(replay, episodes, log=None, make_frame=frame):
    """Add episodes (num_steps, 'terminated' | 'truncated' | 'open') and flush; returns one dict
    per global row: final (an add_final row)."""
    log = [] if log is None else log
    for steps, how in episodes:
        for t in range(steps):
            row = len(log)
            term = how == "terminated" and t == steps - 1
            replay.add(make_frame(row), row % 5, float(row % 3 - 1), term)
            log.append(dict(final=False, terminated=term))
        if how != "open":
            replay.add_final(make_frame(len(log)))
            log.append(dict(final=True, terminated=False))
    replay.flush()
    return log


def valid_rows(log, capacity, n, stack=4):
    """Rows that start a transition: not final, stack not overwritten, n successors written."""
    added = len(log)
    return [r for r in range(max(0, added - capacity + stack - 1), added - n) if not log[r]["final"]]


def set_distinct_priorities(replay, log, n, seed=0, invalid=50.0):
    """Give each valid row a distinct priority in [0.2, ~6] (random order) and every other row
    still in the buffer (final rows, rows outside the window) a large one, so any leak shows.
    Returns {row: priority} of the valid rows."""
    cap, added = replay.capacity, len(log)
    valid = valid_rows(log, cap, n)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(valid), generator=g).tolist()
    prio = {r: 0.2 + 0.3 * k for r, k in zip(valid, order)}
    rows = list(range(max(0, added - cap), added))
    replay.update_priorities(torch.tensor(rows), torch.tensor([prio.get(r, invalid) for r in rows]))
    return prio


def small_args(**kw):
    base = dict(impala_channels=(2, 4, 4), expert_hidden=8, num_experts=2, batch_size=8, n_step=3, gamma=0.99)
    base.update(kw)
    return rb.Args(**base)


def random_obs(batch, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 4, 84, 84), generator=g, dtype=torch.uint8)


# ------------------------------------------------------------------------------------------
# 1. C51 projection
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K, v_max", [(51, 10.0), (5, 2.0)])
def test_projection_matches_loop_reference(K, v_max):
    """project_distribution equals the loop projection for random distributions and returns,
    with terminal transitions (discount 0), rewards pushing atoms outside the support (+-30),
    discount gamma^3 and gamma; every projected row sums to 1."""
    g = torch.Generator().manual_seed(0)
    B = 16
    support = torch.linspace(-v_max, v_max, K)
    probs = torch.randn(B, K, generator=g).mul(2).softmax(dim=-1)
    r = torch.empty(B).uniform_(-3, 3, generator=g)
    r[:4] = torch.tensor([30.0, -30.0, 0.0, 0.3 * v_max])
    d = torch.full((B,), 0.99 ** 3)
    d[[2, 3, 5, 6]] = 0.0  # terminal
    d[7:9] = 0.99
    target_support = r.unsqueeze(1) + d.unsqueeze(1) * support
    out = rb.project_distribution(target_support, probs, support)
    assert out.shape == (B, K)
    torch.testing.assert_close(out.double().sum(dim=1), torch.ones(B, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.double(), project_ref(target_support, probs, v_max), rtol=0, atol=1e-5)
    assert (out >= 0).all()


def test_projection_hand_values():
    """K=51, v_max=10 (delta_z 0.4), terminal: r=0.3 puts 0.25 on atom 25 (z=0) and 0.75 on atom
    26 (z=0.4); r=0 puts all on atom 25; r=+30 / -30 all on the last / first atom; a zero
    reward with discount 1 leaves the distribution unchanged."""
    support = torch.linspace(-10, 10, 51)
    probs = torch.rand(5, 51, generator=torch.Generator().manual_seed(1))
    probs = probs / probs.sum(dim=1, keepdim=True)
    r = torch.tensor([0.3, 0.0, 30.0, -30.0, 0.0])
    d = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    out = rb.project_distribution(r.unsqueeze(1) + d.unsqueeze(1) * support, probs, support)
    expected = torch.zeros(5, 51)
    expected[0, 25], expected[0, 26] = 0.25, 0.75
    expected[1, 25] = expected[2, 50] = expected[3, 0] = 1.0
    expected[4] = probs[4]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# 2-5. prioritised replay
# ------------------------------------------------------------------------------------------
EPISODES = [(9, "terminated"), (1, "truncated"), (12, "truncated"), (7, "terminated"), (8, "open")]  # 41 rows


@pytest.mark.parametrize("capacity", [24, 100], ids=["wrapped", "no-wrap"])
@pytest.mark.parametrize("n", [1, 3])
def test_prioritized_sampling_frequencies(capacity, n):
    """Rows are drawn with probability priority / sum of the priorities of the rows that can
    start a transition (chi-square within ~5 sigma; uniform sampling fails by far); final rows
    and rows outside replay.bounds (also after wrap-around, with a large priority) never are."""
    torch.manual_seed(0)
    replay = rb.PrioritizedFrameReplay(capacity, (2, 2), n_step=n, gamma=GAMMA, stage_rows=5)
    log = fill(replay, EPISODES)
    added = len(log)
    lo, hi = max(0, added - capacity + 3), added - 1 - n
    assert replay.bounds.tolist() == [lo, hi]
    prio = set_distinct_priorities(replay, log, n)
    valid = sorted(prio)
    assert any(log[r]["final"] for r in range(lo, hi + 1))  # the window holds final rows
    rows = torch.cat([replay.sample_rows(32)[0] for _ in range(400)])
    counts = torch.bincount(rows, minlength=added).double()
    assert counts[[r for r in range(added) if r not in prio]].sum() == 0
    p = torch.tensor([prio[r] for r in valid], dtype=torch.float64)
    expected = len(rows) * p / p.sum()
    k = len(valid)
    chi2 = ((counts[valid] - expected) ** 2 / expected).sum().item()
    assert chi2 < (k - 1) + 5 * math.sqrt(2 * (k - 1)), chi2
    uniform = torch.full_like(expected, len(rows) / k)  # the test has the power to reject uniform
    assert ((counts[valid] - uniform) ** 2 / uniform).sum().item() > 10 * ((k - 1) + 5 * math.sqrt(2 * (k - 1)))


@pytest.mark.parametrize("capacity", [24, 100], ids=["wrapped", "no-wrap"])
def test_prioritized_sampling_is_stratified(capacity):
    """In a batch of B, sample i comes from the i-th of B equal segments of the cumulative
    priority mass (in buffer-position order, invalid rows weighing 0), and the returned
    priority is the row's."""
    torch.manual_seed(1)
    n, B = 3, 64
    replay = rb.PrioritizedFrameReplay(capacity, (2, 2), n_step=n, gamma=GAMMA)
    log = fill(replay, EPISODES)
    prio = set_distinct_priorities(replay, log, n, seed=2)
    w = torch.zeros(capacity, dtype=torch.float64)
    for r, pr in prio.items():
        w[r % capacity] = torch.tensor(pr, dtype=torch.float32).double()
    cdf = w.cumsum(0)
    total = cdf[-1].item()
    for _ in range(5):
        rows, pr = replay.sample_rows(B)
        pos = rows % capacity
        upper, lower = cdf[pos], cdf[pos] - w[pos]
        i = torch.arange(B, dtype=torch.float64)
        assert (lower < (i + 1) / B * total + 1e-9).all() and (upper > i / B * total - 1e-9).all()
        assert pr.tolist() == pytest.approx([prio[r] for r in rows.tolist()], rel=1e-6)


def test_importance_weights():
    """weights = (1 / sqrt(p + 1e-10)) / max over the batch, p the sampled rows' priorities;
    the largest weight is 1 (the lowest-priority row in the batch)."""
    torch.manual_seed(2)
    n = 3
    replay = rb.PrioritizedFrameReplay(24, (2, 2), n_step=n, gamma=GAMMA)
    log = fill(replay, EPISODES)
    prio = set_distinct_priorities(replay, log, n, seed=3)
    batch = replay.sample(32)
    p = torch.tensor([prio[r] for r in batch["rows"].tolist()], dtype=torch.float64)
    assert len(set(p.tolist())) > 3
    w = 1.0 / torch.sqrt(p + 1e-10)
    torch.testing.assert_close(batch["weights"].double(), w / w.max(), rtol=1e-5, atol=1e-7)
    assert batch["weights"].max().item() == pytest.approx(1.0)
    assert batch["weights"][p.argmin()].item() == pytest.approx(1.0)


def test_new_rows_get_max_priority():
    """Rows enter with priority 1 at first, then with the largest priority ever set (5 after an
    update with 5); a later update with smaller values does not lower max_priority; a larger
    one (7) raises it for rows flushed afterwards. Rows already in keep their priority."""
    cap, n = 64, 1
    replay = rb.PrioritizedFrameReplay(cap, (2, 2), n_step=n, gamma=GAMMA, stage_rows=4)
    log = fill(replay, [(6, "terminated")])
    assert replay.priorities[: len(log)].tolist() == [1.0] * len(log)
    assert replay.max_priority.item() == 1.0
    replay.update_priorities(torch.tensor([0, 2]), torch.tensor([5.0, 0.5]))
    assert replay.max_priority.item() == 5.0
    start = len(log)
    fill(replay, [(5, "open")], log)
    assert replay.priorities[start: len(log)].tolist() == [5.0] * (len(log) - start)
    replay.update_priorities(torch.tensor([1, 3]), torch.tensor([0.1, 2.0]))
    assert replay.max_priority.item() == 5.0
    start = len(log)
    replay.add(frame(start), 0, 0.0, False)  # staged rows get the max priority at flush time
    replay.update_priorities(torch.tensor([4]), torch.tensor([7.0]))
    replay.flush()
    assert replay.max_priority.item() == 7.0
    assert replay.priorities[start].item() == 7.0
    assert replay.priorities[:5].tolist() == pytest.approx([5.0, 0.1, 0.5, 2.0, 7.0])


def test_new_rows_get_max_priority_after_wrap():
    """After wrap-around, an overwritten position takes the max priority, not its old value."""
    cap = 16
    replay = rb.PrioritizedFrameReplay(cap, (2, 2), n_step=1, gamma=GAMMA, stage_rows=4)
    log = fill(replay, [(15, "open")])
    replay.update_priorities(torch.arange(15), torch.full((15,), 0.25))
    replay.update_priorities(torch.tensor([3]), torch.tensor([3.0]))
    fill(replay, [(6, "open")], log)  # rows 15..20 -> positions 15, 0..4
    assert replay.priorities.tolist() == pytest.approx([3.0] * 5 + [0.25] * 10 + [3.0])


@pytest.mark.parametrize("episodes", [EPISODES, EPISODES[:2]], ids=["wrapped", "partial"])
def test_prioritized_state_dict_round_trip(episodes):
    """state_dict/load_state_dict keeps priorities (staged rows included, at max priority) and
    max_priority, and gives identical samples (rows, weights, transitions) under one seed."""
    cap, n = 24, 3
    a = rb.PrioritizedFrameReplay(cap, (2, 2), n_step=n, gamma=GAMMA, stage_rows=8)
    log = fill(a, episodes)
    set_distinct_priorities(a, log, n, seed=4, invalid=9.5)
    a.add(frame(len(log)), 1, 1.0, False)  # staged: state_dict flushes it
    state = a.state_dict()
    b = rb.PrioritizedFrameReplay(cap, (2, 2), n_step=n, gamma=GAMMA)
    b.load_state_dict(state)
    assert a.priorities[len(log) % cap].item() == a.max_priority.item() == 9.5
    assert torch.equal(a.priorities, b.priorities)
    assert torch.equal(a.max_priority, b.max_priority)
    assert torch.equal(a.bounds, b.bounds)
    torch.manual_seed(7)
    sa = a.sample(32)
    torch.manual_seed(7)
    sb = b.sample(32)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------------------------------
# noisy layers
# ------------------------------------------------------------------------------------------
def f_noise(eps):
    return eps.sign() * eps.abs().sqrt()


def test_noisy_init():
    """NoisyNetwork's initialiser: mu ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (weights and bias),
    sigma = 0.1 / sqrt(fan_in); the same for the noisy first layer of the experts."""
    torch.manual_seed(0)
    fan_in = 64
    bound = 1 / math.sqrt(fan_in)
    layer = rb.NoisyLinear(fan_in, 300)
    ex = rb.ExpertMLPs(3, fan_in, 100, 8, noisy=True)
    for mu in (layer.weight, layer.bias, ex.w1, ex.b1):
        assert mu.abs().max().item() <= bound
        assert mu.abs().max().item() > 0.95 * bound
        assert abs(mu.std().item() - bound / math.sqrt(3)) < 0.1 * bound  # uniform's std
    for sigma in (layer.sigma_weight, layer.sigma_bias, ex.sigma_w1, ex.sigma_b1):
        assert torch.allclose(sigma, torch.full_like(sigma, 0.1 * bound))


@pytest.mark.parametrize("mode", ["sample", "shared"])
def test_noisy_linear_matches_explicit_weights(mode):
    """NoisyLinear = x (mu_W + sigma_W * f(eps_out) f(eps_in)^T)^T + mu_b + sigma_b * f(eps_out),
    one (eps_in, eps_out) draw per row (`sample`) or for the batch (`shared`); replayed from
    the same seed, with eps_in drawn before eps_out."""
    torch.manual_seed(0)
    layer = rb.NoisyLinear(5, 3)
    with torch.no_grad():
        layer.sigma_weight.uniform_(0.1, 0.5)  # away from the constant init, so a transpose shows
        layer.sigma_bias.uniform_(0.1, 0.5)
    layer.noise = mode
    x = torch.randn(4, 5)
    torch.manual_seed(11)
    y = layer(x)
    rows = 4 if mode == "sample" else 1
    torch.manual_seed(11)
    f_in, f_out = f_noise(torch.randn(rows, 5)), f_noise(torch.randn(rows, 3))
    mu_w, mu_b, s_w, s_b = (t.detach().double() for t in (layer.weight, layer.bias, layer.sigma_weight,
                                                          layer.sigma_bias))
    for b in range(4):
        k = b if mode == "sample" else 0
        w = mu_w + s_w * torch.outer(f_out[k].double(), f_in[k].double())
        bias = mu_b + s_b * f_out[k].double()
        torch.testing.assert_close(y[b].double(), w @ x[b].double() + bias, rtol=1e-5, atol=1e-6)
    layer.noise = "off"
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_noisy_experts_match_explicit_weights():
    """ExpertMLPs(noisy=True), `sample`: the first layer of expert e for sample b is
    mu_W1[e] + sigma_W1[e] * f(eps_in_b) f(eps_out_b)^T, bias mu_b1[e] + sigma_b1[e] * f(eps_out_b),
    one draw per sample shared by all experts and slots; the second layer is plain."""
    torch.manual_seed(0)
    E, d, H, B, S = 3, 4, 5, 2, 2
    ex = rb.ExpertMLPs(E, d, H, d, noisy=True)
    with torch.no_grad():
        ex.sigma_w1.uniform_(0.1, 0.5)
        ex.sigma_b1.uniform_(0.1, 0.5)
        ex.b2.uniform_(-0.3, 0.3)
    assert ex.noise == "sample"
    x = torch.randn(B, E, S, d)
    torch.manual_seed(5)
    out, hidden = ex(x)
    torch.manual_seed(5)
    f_in, f_out = f_noise(torch.randn(B, d)).double(), f_noise(torch.randn(B, H)).double()
    w1, b1, w2, b2, sw, sb = (t.detach().double() for t in (ex.w1, ex.b1, ex.w2, ex.b2, ex.sigma_w1, ex.sigma_b1))
    for b in range(B):
        for e in range(E):
            for s in range(S):
                h = torch.relu(x[b, e, s].double() @ (w1[e] + sw[e] * torch.outer(f_in[b], f_out[b]))
                               + b1[e] + sb[e] * f_out[b])
                torch.testing.assert_close(hidden[b, e, s].double(), h, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(out[b, e, s].double(), h @ w2[e] + b2[e], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# 6. RainbowNetwork
# ------------------------------------------------------------------------------------------
def test_network_shapes_q_and_dueling():
    """q (2, 6), logits (2, 6, 51); q = sum_z z softmax(logits); dueling: per atom, logits minus
    their mean over actions equal advantage minus its mean, and the mean is the value stream."""
    torch.manual_seed(0)
    net = rb.RainbowNetwork(small_args(), num_actions=6)
    rb.set_noise(net, "off")
    obs = random_obs(2, 0)
    with torch.no_grad():
        q, logits = net(obs)
        assert q.shape == (2, 6) and logits.shape == (2, 6, 51)
        support = torch.linspace(-10.0, 10.0, 51)
        torch.testing.assert_close(q, (support * logits.softmax(-1)).sum(-1), rtol=1e-5, atol=1e-6)
        features, _ = net.torso(obs)
        adv = net.advantage(features).view(2, 6, 51)
        val = net.value(features)
    torch.testing.assert_close(logits - logits.mean(1, keepdim=True), adv - adv.mean(1, keepdim=True),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.mean(1), val, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits[:, 0], logits[:, 1])


def test_action_count_from_gymnasium_is_a_python_int():
    """gymnasium gives Discrete.n as a numpy integer, which torch.compile would trace as a
    tensor (a graph break at the head's view); the network keeps a Python int."""
    import numpy as np
    net = rb.RainbowNetwork(small_args(), num_actions=np.int64(6))
    assert type(net.num_actions) is int


def test_network_scalar_q_and_no_dueling():
    """num_atoms=1: q == logits.squeeze(-1) (no softmax); dueling=False: logits are the
    advantage stream itself and there is no value layer."""
    torch.manual_seed(0)
    obs = random_obs(2, 1)
    net = rb.RainbowNetwork(small_args(num_atoms=1), num_actions=6)
    rb.set_noise(net, "off")
    with torch.no_grad():
        q, logits = net(obs)
    assert q.shape == (2, 6) and logits.shape == (2, 6, 1)
    assert torch.equal(q, logits.squeeze(-1))
    net = rb.RainbowNetwork(small_args(dueling=False), num_actions=6)
    rb.set_noise(net, "off")
    assert net.value is None
    with torch.no_grad():
        _, logits = net(obs)
        torch.testing.assert_close(logits, net.advantage(net.torso(obs)[0]).view(2, 6, 51))


def test_noisy_flag_and_set_noise():
    """noisy=False: no sigma parameters; noisy=True: heads and expert first layers have them,
    and set_noise reaches every one of them."""
    net = rb.RainbowNetwork(small_args(noisy=False), num_actions=6)
    assert not any("sigma" in name for name, _ in net.named_parameters())
    net = rb.RainbowNetwork(small_args(), num_actions=6)
    names = [name for name, _ in net.named_parameters() if "sigma" in name]
    for part in ("advantage.sigma_weight", "value.sigma_weight", "torso.moe.experts.sigma_w1"):
        assert part in names, names
    for mode in ("off", "shared", "sample"):
        rb.set_noise(net, mode)
        assert net.advantage.noise == net.value.noise == net.torso.moe.experts.noise == mode


def test_noise_modes():
    """off: two passes agree; sample: they differ, and two copies of one observation in a batch
    get different outputs; shared: copies agree within a pass, passes differ. Each noisy part
    alone (advantage head, value head, experts) changes the output."""
    torch.manual_seed(0)
    net = rb.RainbowNetwork(small_args(), num_actions=6)
    obs = random_obs(1, 2).repeat(2, 1, 1, 1)
    with torch.no_grad():
        rb.set_noise(net, "off")
        q_off, _ = net(obs)
        assert torch.equal(q_off, net(obs)[0])
        assert torch.equal(q_off[0], q_off[1])
        rb.set_noise(net, "sample")
        q1, q2 = net(obs)[0], net(obs)[0]
        assert not torch.allclose(q1, q2, atol=1e-6)
        assert not torch.allclose(q1[0], q1[1], atol=1e-6)
        rb.set_noise(net, "shared")
        q1, q2 = net(obs)[0], net(obs)[0]
        assert torch.equal(q1[0], q1[1])
        assert not torch.allclose(q1, q2, atol=1e-6)
        for part in (net.advantage, net.value, net.torso.moe.experts):
            rb.set_noise(net, "off")
            part.noise = "sample"
            assert not torch.allclose(net(obs)[1], net(obs)[1], atol=1e-6)


# ------------------------------------------------------------------------------------------
# 7. targets
# ------------------------------------------------------------------------------------------
def target_batch(B=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ret = torch.empty(B).uniform_(-2, 2, generator=g)
    ret[0], ret[1] = 30.0, -30.0
    discount = torch.full((B,), 0.99 ** 3)
    discount[2:4] = 0.0
    return {"next_obs": random_obs(B, seed + 100), "return": ret, "discount": discount}


@pytest.mark.parametrize("double, num_atoms", [(True, 51), (False, 51), (True, 1), (False, 1)])
def test_targets_double_and_plain(double, num_atoms):
    """a* = argmax of the online Q (double) or the target Q (plain) at next_obs; the target is
    the projection of R + discount * z under the target net's softmax at a* (C51), or
    R + discount * Q_target(s', a*) (scalar). Online and target nets differ, and their argmaxes
    differ on some rows, so picking the wrong network fails."""
    args = small_args(noisy=False, double=double, num_atoms=num_atoms)
    torch.manual_seed(0)
    online = rb.RainbowNetwork(args, 6)
    torch.manual_seed(1)
    target = rb.RainbowNetwork(args, 6)
    batch = target_batch()
    out = rb.rainbow_targets(args, online, target, batch)
    with torch.no_grad():
        q_on, _ = online(batch["next_obs"])
        q_t, logits_t = target(batch["next_obs"])
    assert (q_on.argmax(1) != q_t.argmax(1)).any()
    best = (q_on if double else q_t).argmax(1)
    chosen = logits_t[torch.arange(8), best]
    if num_atoms == 1:
        expected = batch["return"] + batch["discount"] * chosen.squeeze(-1)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    else:
        expected = project_ref(batch["return"].unsqueeze(1) + batch["discount"].unsqueeze(1) * torch.linspace(-10, 10, 51),
                               chosen.softmax(-1), 10.0)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_targets_one_noise_draw_per_batch():
    """Noisy nets: the target uses one noise draw for the whole batch (two copies of a transition
    get the same target, two calls differ), and the online net is left sampling per row."""
    args = small_args()
    torch.manual_seed(0)
    online = rb.RainbowNetwork(args, 6)
    target = copy.deepcopy(online)
    batch = target_batch(B=2)
    batch["next_obs"][1] = batch["next_obs"][0]
    batch["return"].fill_(0.5)
    batch["discount"].fill_(0.97)
    t1 = rb.rainbow_targets(args, online, target, batch)
    t2 = rb.rainbow_targets(args, online, target, batch)
    assert torch.equal(t1[0], t1[1])
    assert not torch.allclose(t1, t2, atol=1e-6)
    assert online.advantage.noise == online.torso.moe.experts.noise == "sample"


# ------------------------------------------------------------------------------------------
# loss
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_atoms", [51, 1])
def test_loss_matches_definition(num_atoms):
    """C51: per-sample loss = -sum_i target_i log softmax(logits[a])_i; scalar: Huber (delta 1)
    on Q[a] - target, both branches exercised; total = mean(weights * per-sample), or the plain
    mean without weights."""
    args = small_args(noisy=False, num_atoms=num_atoms)
    torch.manual_seed(0)
    net = rb.RainbowNetwork(args, 6)
    B = 6
    obs = random_obs(B, 3)
    action = torch.tensor([0, 5, 2, 2, 3, 1])
    weights = torch.tensor([1.0, 0.5, 0.25, 0.8, 0.1, 0.9])
    with torch.no_grad():
        q, logits = net(obs)
    if num_atoms == 1:
        diff = torch.tensor([0.3, -3.0, 0.9, 2.0, -0.2, 5.0])
        targets = q[torch.arange(B), action] - diff  # Q[a] - target = diff
        ref = torch.where(diff.abs() < 1, 0.5 * diff ** 2, diff.abs() - 0.5)
    else:
        targets = torch.rand(B, 51, generator=torch.Generator().manual_seed(4))
        targets = targets / targets.sum(1, keepdim=True)
        ref = -(targets * logits[torch.arange(B), action].log_softmax(-1)).sum(-1)
    batch = {"obs": obs, "action": action, "weights": weights}
    total, per = rb.rainbow_loss(args, rb.online_logits(args, net, batch), batch, targets)
    torch.testing.assert_close(per.detach(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(total.detach(), (weights * ref).mean(), rtol=1e-4, atol=1e-5)
    del batch["weights"]
    total, _ = rb.rainbow_loss(args, rb.online_logits(args, net, batch), batch, targets)
    torch.testing.assert_close(total.detach(), ref.mean(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# 8. one update step
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("moe", ["soft", "top1"])
def test_update_step_changes_params_and_priorities(moe):
    """make_update_step on a filled PrioritizedFrameReplay (its pieces: the targets beside the
    online pass, which on the CPU run one after the other): the returned loss is finite and is
    the mean per-sample C51 loss of the pre-update network on the sampled batch; the parameters
    are one Adam step on that loss weighted by the importance weights (with Top1, plus the
    weighted importance and load losses); the sampled rows' priorities become
    sqrt(per-sample loss + 1e-10), the others keep theirs, and max_priority follows."""
    torch.manual_seed(0)
    aux_weights = dict(importance_loss_weight=0.1, load_loss_weight=0.1) if moe == "top1" else {}
    args = small_args(noisy=False, learning_rate=1e-3, moe=moe, **aux_weights)
    q_net = rb.RainbowNetwork(args, 6)
    torch.manual_seed(1)
    target_net = rb.RainbowNetwork(args, 6).requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    frames = torch.randint(0, 256, (80, 84, 84), generator=g, dtype=torch.uint8).numpy()
    cap = 64
    replay = rb.PrioritizedFrameReplay(cap, (84, 84), 4, args.n_step, args.gamma)
    log = fill(replay, [(20, "terminated"), (15, "truncated"), (10, "open")], make_frame=lambda r: frames[r])
    set_distinct_priorities(replay, log, args.n_step)  # importance weights that differ
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    captured = {}
    sample = replay.sample

    def spy(batch_size):
        captured.update(sample(batch_size))
        return captured

    replay.sample = spy
    before = copy.deepcopy(q_net)
    prio_before, max_before = replay.priorities.clone(), replay.max_priority.item()
    step = rb.make_update_step(args, q_net, target_net, optimizer, replay)
    rng = torch.get_rng_state()
    loss = step()
    rng_after = torch.get_rng_state()
    assert torch.isfinite(loss)
    batch = captured
    B = args.batch_size
    assert len(batch["rows"]) == B
    # the per-sample loss, recomputed from the definition with the pre-update network
    with torch.no_grad():
        q_next = before(batch["next_obs"])[0]
        _, logits_next = target_net(batch["next_obs"])
        best = q_next.argmax(1)
        target = project_ref(batch["return"].unsqueeze(1) + batch["discount"].unsqueeze(1) * torch.linspace(-10, 10, 51),
                             logits_next[torch.arange(B), best].softmax(-1), 10.0).float()
        logits = before(batch["obs"])[1][torch.arange(B), batch["action"]]
        per = -(target * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(loss, per.mean(), rtol=1e-4, atol=1e-5)
    pos = batch["rows"] % cap
    torch.testing.assert_close(replay.priorities[pos], torch.sqrt(per + 1e-10), rtol=1e-4, atol=1e-6)
    untouched = torch.ones(cap, dtype=torch.bool)
    untouched[pos] = False
    assert torch.equal(replay.priorities[untouched], prio_before[untouched])
    assert replay.max_priority.item() == pytest.approx(max(max_before, torch.sqrt(per + 1e-10).max().item()), rel=1e-5)
    assert batch["weights"].std() > 0.05
    mine = copy.deepcopy(before)
    my_optimizer = torch.optim.Adam(mine.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    torch.set_rng_state(rng)
    sample(B)  # the sampling's draws, so that the load loss's noise below is the update's
    _, logits, _, aux = mine(batch["obs"], with_aux=True)
    chosen = logits[torch.arange(B), batch["action"]]
    total = (batch["weights"] * -(target * chosen.log_softmax(-1)).sum(-1)).mean()
    if moe == "top1":
        total = total + 0.1 * rb.importance_loss(aux["probs"]) + 0.1 * rb.load_loss(aux["logits"], 1.0 / args.num_experts)
    my_optimizer.zero_grad()
    total.backward()
    my_optimizer.step()
    assert torch.equal(torch.get_rng_state(), rng_after)  # the same random draws, in the same order
    for (name, p0), p1, p2 in zip(before.named_parameters(), q_net.parameters(), mine.parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=1e-6, msg=name)
        if p0.dim() > 1 and p2.grad is not None and p2.grad.abs().sum() > 0:
            assert not torch.equal(p0, p1), name
