"""Unit tests of the Atari 100k pieces of drq_moe_atari100k.py and der_moe_atari100k.py (the
shared blocks are byte for byte the same, tests/test_blocks.py): DrQ's augmentation against a
replicate-pad-and-crop reference, float input to the network, evaluation noise, the target of a
target network that is the online one, one augmented update, 10-step returns at episode ends,
no-op starts, the vectorised evaluation on a real game and the protocol's flag checks."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import der_moe_atari100k as der
import drq_moe_atari100k as drq

PAD = 4
TINY = dict(encoder="impala", impala_channels=(4, 8, 8), expert_hidden=16, num_experts=2)


def tiny_args(module=drq, **kw):
    return dataclasses.replace(module.Args(), **{**TINY, "batch_size": 8, **kw})


def random_obs(batch, seed, size=84, channels=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, size, size), generator=g, dtype=torch.uint8)


def diverse_obs(batch, seed):
    """Random frames of a different brightness per sample (a net's argmax varies across them)."""
    g = torch.Generator().manual_seed(seed)
    top = torch.randint(1, 256, (batch, 1, 1, 1), generator=g)
    return (torch.randint(0, 256, (batch, 4, 84, 84), generator=g) * top // 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------
# 1. DrQ augmentation
# ------------------------------------------------------------------------------------------
def shifted_reference(padded, dy, dx, h, w, pad=PAD):
    """The crop at offset (pad + dy, pad + dx) of the frames padded by `pad` replicated edge
    pixels, over 255: out[i, j] = obs[clip(i + dy), clip(j + dx)]."""
    return padded[..., pad + dy: pad + dy + h, pad + dx: pad + dx + w] / 255.0


def recover_offsets(obs, out, pad=PAD):
    """For every sample and frame, the unique shift (dy, dx) in -pad..pad whose reference crop
    equals `out` exactly (fails if none or several match). Returns (B, C, 2) longs."""
    h, w = obs.shape[-2:]
    padded = F.pad(obs.float(), (pad, pad, pad, pad), mode="replicate")
    shifts = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)]
    matches = torch.stack([(shifted_reference(padded, dy, dx, h, w, pad) == out).flatten(2).all(-1)
                           for dy, dx in shifts])  # (S, B, C)
    count = matches.sum(0)
    assert (count == 1).all(), f"{int((count == 0).sum())} frames match no shift, {int((count > 1).sum())} several"
    return torch.tensor(shifts)[matches.long().argmax(0)]


def test_augment_shape_and_dtype():
    """uint8 (B, 4, 84, 84) -> float32 (B, 4, 84, 84) in [0, 1.1]: scaled like `preprocess`."""
    torch.manual_seed(0)
    obs = random_obs(5, 0)
    out = drq.drq_augment(obs)
    assert out.shape == (5, 4, 84, 84) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255 * 1.1 / 255 + 1e-6 and out.max() > 0.8


def test_augment_is_a_replicate_padded_random_shift():
    """intensity_scale=0: each 84x84 sample is its input / 255 shifted by an integer (dy, dx) in
    -4..3 with the edges repeated (F.pad replicate, then crop), the same shift for all 4
    frames of the stack, and not the same shift for every sample."""
    torch.manual_seed(1)
    obs = random_obs(24, 1)
    out = drq.drq_augment(obs, intensity_scale=0.0)
    offsets = recover_offsets(obs, out)
    assert (offsets == offsets[:, :1]).all(), "frames of one stack were shifted differently"
    assert offsets.min() >= -PAD and offsets.max() <= PAD - 1
    assert len({tuple(o) for o in offsets[:, 0].tolist()}) > 5


def test_augment_offsets_cover_minus4_to_3_never_4():
    """Over 2000 (small) samples every offset -4..3 occurs on both axes, the 64 pairs all occur,
    and +4 never does (the official crop `randint(0, 2 * pad)`, upper bound excluded)."""
    torch.manual_seed(2)
    obs = random_obs(2000, 2, size=12, channels=2)
    offsets = recover_offsets(obs, drq.drq_augment(obs, intensity_scale=0.0))
    assert (offsets[:, 0] == offsets[:, 1]).all()
    dy, dx = offsets[:, 0, 0], offsets[:, 0, 1]
    for axis in (dy, dx):
        assert sorted(set(axis.tolist())) == list(range(-PAD, PAD))
        counts = torch.bincount(axis + PAD, minlength=2 * PAD + 1)
        assert counts[2 * PAD] == 0
        assert counts[: 2 * PAD].min() > 2000 / 8 * 0.7  # uniform over the eight offsets (~5 sigma)
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 64


def test_augment_shift_per_batch_is_one_shift_for_the_whole_batch():
    """shift_per="batch" (the official code of 2021): every sample and frame of a batch gets the same
    shift, still the replicate-padded crop, and over many batches every offset -4..3 occurs; the
    intensity stays one factor per sample."""
    torch.manual_seed(7)
    obs = random_obs(24, 1)
    offsets = recover_offsets(obs, drq.drq_augment(obs, intensity_scale=0.0, shift_per="batch"))
    assert (offsets == offsets[:1, :1]).all(), "samples of one batch were shifted differently"
    small = random_obs(4, 2, size=12, channels=2)
    seen = torch.cat([recover_offsets(small, drq.drq_augment(small, intensity_scale=0.0, shift_per="batch"))[0, 0:1]
                      for _ in range(300)])
    for axis in seen.T:
        assert sorted(set(axis.tolist())) == list(range(-PAD, PAD))
    constant = torch.full((500, 4, 16, 16), 100, dtype=torch.uint8)
    factors = (drq.drq_augment(constant, shift_per="batch") / (100 / 255))[:, 0, 0, 0]
    assert len(set(factors.tolist())) > 450


def test_augment_intensity_one_factor_per_sample():
    """A constant input: output / (input / 255) is one factor per sample (all frames and pixels),
    1 + 0.05 clip(N(0, 1), -2, 2): inside [0.9, 1.1], reaching both clip bounds, mean ~1 and
    std ~0.05, different across samples."""
    torch.manual_seed(3)
    B = 2000
    obs = torch.full((B, 4, 16, 16), 100, dtype=torch.uint8)
    ratio = drq.drq_augment(obs) / (100 / 255)
    factor = ratio[:, :1, :1, :1]
    torch.testing.assert_close(ratio, factor.expand_as(ratio), rtol=1e-6, atol=0)
    f = factor.flatten().double()
    assert f.min() >= 0.9 - 1e-6 and f.max() <= 1.1 + 1e-6
    assert ((f - 0.9).abs() < 1e-5).sum() > 10 and ((f - 1.1).abs() < 1e-5).sum() > 10  # P(|N| > 2) = 4.6%
    assert abs(f.mean().item() - 1.0) < 0.005
    assert 0.044 < f.std().item() < 0.052  # 0.05 * std of N(0, 1) clipped at +-2 (0.94): ~0.047
    assert len(set(f.tolist())) > B * 0.9


def test_augment_reproducible_under_manual_seed():
    obs = random_obs(6, 4)
    torch.manual_seed(5)
    a = drq.drq_augment(obs)
    torch.manual_seed(5)
    b = drq.drq_augment(obs)
    torch.manual_seed(6)
    c = drq.drq_augment(obs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ------------------------------------------------------------------------------------------
# 2. float input
# ------------------------------------------------------------------------------------------
def test_preprocess_and_network_accept_float_frames():
    """preprocess scales uint8 by 1/255 and passes float frames through unchanged; so the network
    gives the same Q on uint8 frames and on those frames as float / 255 (augmented input), and a
    different one on unscaled float frames (they are not divided again)."""
    obs = random_obs(3, 5)
    scaled = obs.float() / 255.0
    torch.testing.assert_close(drq.preprocess(obs), scaled, rtol=0, atol=0)
    assert drq.preprocess(obs).dtype == torch.float32
    x = torch.rand(2, 4, 84, 84) * 3.0
    assert torch.equal(drq.preprocess(x), x)
    torch.manual_seed(0)
    net = drq.RainbowNetwork(tiny_args(), num_actions=6)
    with torch.no_grad():
        q_u8, logits_u8 = net(obs)
        q_f, logits_f = net(scaled)
        q_raw, _ = net(obs.float())
    torch.testing.assert_close(q_f, q_u8, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(logits_f, logits_u8, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(q_raw, q_u8, atol=1e-4)


# ------------------------------------------------------------------------------------------
# 3. evaluation noise (DER: noisy heads and experts)
# ------------------------------------------------------------------------------------------
def noisy_parts(net):
    heads = [m for m in net.modules() if isinstance(m, der.NoisyLinear)]
    experts = [m for m in net.modules() if isinstance(m, der.ExpertMLPs) and m.noisy]
    return heads, experts


def test_set_eval_noise_soft_moe():
    """DER Soft MoE (noisy): expert_noise=False turns every noisy layer off (two passes agree);
    expert_noise=True turns the heads' NoisyLinear off and leaves the experts sampling, so
    two passes differ (and agree again once the experts are off too)."""
    args = tiny_args(der)
    assert args.noisy and args.moe == "soft"
    torch.manual_seed(0)
    net = der.RainbowNetwork(args, num_actions=6)
    heads, experts = noisy_parts(net)
    assert len(heads) == 2 and len(experts) == 1
    obs = random_obs(3, 6)
    with torch.no_grad():
        der.set_noise(net, "sample")
        assert not torch.equal(net(obs)[1], net(obs)[1])
        der.set_eval_noise(net, expert_noise=False)
        assert all(m.noise == "off" for m in heads + experts)
        assert torch.equal(net(obs)[1], net(obs)[1])
        der.set_eval_noise(net, expert_noise=True)
        assert all(m.noise == "off" for m in heads)
        assert all(m.noise == "sample" for m in experts)
        assert not torch.allclose(net(obs)[1], net(obs)[1], atol=1e-6)
        # the heads are off: freeze the experts' noise and the output is deterministic again
        experts[0].noise = "off"
        assert torch.equal(net(obs)[1], net(obs)[1])


@pytest.mark.parametrize("expert_noise", [False, True])
def test_set_eval_noise_dense_baseline_is_deterministic(expert_noise):
    """DER baseline (moe none, noisy dense layer and heads): evaluation has no noise whatever
    expert_noise says (there are no experts)."""
    args = tiny_args(der, moe="none")
    torch.manual_seed(0)
    net = der.RainbowNetwork(args, num_actions=6)
    heads, experts = noisy_parts(net)
    assert len(heads) == 3 and not experts  # the dense layer and both heads
    obs = random_obs(3, 7)
    with torch.no_grad():
        assert not torch.equal(net(obs)[1], net(obs)[1])  # training: noisy
        der.set_eval_noise(net, expert_noise=expert_noise)
        assert torch.equal(net(obs)[1], net(obs)[1])


# ------------------------------------------------------------------------------------------
# 4. target network = online network (DrQ, target_update_period 1)
# ------------------------------------------------------------------------------------------
def target_batch(B=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    discount = torch.full((B,), 0.99 ** 10)
    discount[:2] = 0.0
    return {"obs": diverse_obs(B, seed + 1), "next_obs": diverse_obs(B, seed + 2),
            "return": torch.empty(B).uniform_(-2, 2, generator=g), "discount": discount,
            "action": torch.randint(0, 6, (B,), generator=g)}


@pytest.mark.parametrize("moe, seed", [("soft", 2), ("none", 0)])
def test_targets_with_target_net_aliasing_online_net(moe, seed):
    """Scalar Q (num_atoms 1), no noise: rainbow_targets(args, q, q, batch) with --double equals
    R + discount * max_a Q(s', a), the same without --double, and the same with a separate deep
    copy of q as the target network (which takes the two-network double-DQN path)."""
    args = tiny_args(noisy=False, num_atoms=1, double=True, moe=moe)
    assert args.target_update_period == 1
    torch.manual_seed(seed)
    q = drq.RainbowNetwork(args, num_actions=6)
    batch = target_batch(seed=1)
    with torch.no_grad():
        q_next = q(batch["next_obs"])[0]
    assert len(set(q_next.argmax(1).tolist())) > 1  # max is not one fixed column
    expected = batch["return"] + batch["discount"] * q_next.max(dim=1).values
    assert not torch.allclose(expected, batch["return"] + batch["discount"] * q_next[:, 0])
    aliased = drq.rainbow_targets(args, q, q, batch)
    torch.testing.assert_close(aliased, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(drq.rainbow_targets(dataclasses.replace(args, double=False), q, q, batch), expected,
                               rtol=1e-6, atol=1e-6)
    copied = drq.rainbow_targets(args, q, copy.deepcopy(q).requires_grad_(False), batch)
    torch.testing.assert_close(copied, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch["return"][:2], aliased[:2])  # discount 0: the return alone


def test_targets_aliased_noisy_net_uses_one_draw():
    """Noisy DrQ variant, target net = online net: the target is R + discount * max_a Q(s', a) of
    one shared noise draw (the pass that picks a* also values it); the net is left sampling."""
    args = tiny_args(noisy=True, num_atoms=1, double=True)
    torch.manual_seed(0)
    q = drq.RainbowNetwork(args, num_actions=6)
    with torch.no_grad():  # loud noise: another draw would pick other actions
        for name, p in q.named_parameters():
            if "sigma" in name:
                p.mul_(30.0)
    batch = target_batch(seed=3)
    torch.manual_seed(11)
    out = drq.rainbow_targets(args, q, q, batch)
    assert all(m.noise == "sample" for m in q.modules() if hasattr(m, "noise"))  # left sampling (training)
    drq.set_noise(q, "shared")
    torch.manual_seed(11)
    with torch.no_grad():
        q_next = q(batch["next_obs"])[0]
        torch.manual_seed(12)
        other = q(batch["next_obs"])[0]
    drq.set_noise(q, "sample")
    assert (other.argmax(1) != q_next.argmax(1)).any()  # a second draw would show
    torch.testing.assert_close(out, batch["return"] + batch["discount"] * q_next.max(dim=1).values,
                               rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------
# 5. one DrQ update with augmentation
# ------------------------------------------------------------------------------------------
def test_update_step_with_drq_augment():
    """make_update_step(augment=drq_augment), target net = online net, uniform FrameReplay of
    random frames: the augmentation runs on the sampled obs and on next_obs (two calls, two
    draws); the returned loss is finite and is the Huber loss of the pre-update network on the
    augmented states against R + discount * max_a Q(augmented s', a); every weight changes."""
    args = tiny_args(learning_rate=1e-3)
    assert args.num_atoms == 1 and not args.noisy and not args.prioritized and args.data_augmentation
    torch.manual_seed(0)
    q_net = drq.RainbowNetwork(args, num_actions=6)
    target_net = q_net
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    replay = drq.FrameReplay(64, (84, 84), 4, args.n_step, args.gamma)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (48, 84, 84), dtype=np.uint8)
    for i in range(47):
        replay.add(frames[i], int(rng.integers(6)), float(rng.uniform(-0.05, 0.05)), i == 20)  # small: Q matters
        if i in (20, 35):
            replay.add_final(frames[i + 1])
    replay.flush()
    assert replay.can_sample()

    sampled, calls = {}, []
    sample = replay.sample

    def spy_sample(batch_size):
        batch = sample(batch_size)
        sampled.update({k: v.clone() for k, v in batch.items()})
        return batch

    def counting_augment(x):
        out = drq.drq_augment(x)
        calls.append((x.clone(), out.clone()))
        return out

    replay.sample = spy_sample
    before = copy.deepcopy(q_net)
    step = drq.make_update_step(args, q_net, target_net, optimizer, replay, augment=counting_augment)
    torch.manual_seed(1)
    loss = step()
    assert torch.isfinite(loss)
    assert len(calls) == 2
    (obs_in, obs_aug), (next_in, next_aug) = calls
    assert torch.equal(obs_in, sampled["obs"]) and torch.equal(next_in, sampled["next_obs"])
    assert not torch.equal(obs_aug, sampled["obs"].float() / 255)
    with torch.no_grad():
        def huber(obs, next_obs):
            target = sampled["return"] + sampled["discount"] * before(next_obs)[0].max(dim=1).values
            chosen = before(obs)[0][torch.arange(args.batch_size), sampled["action"]]
            return F.smooth_l1_loss(chosen, target)

        augmented, unaugmented = huber(obs_aug, next_aug), huber(sampled["obs"], sampled["next_obs"])
    torch.testing.assert_close(loss, augmented, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(loss, unaugmented, rtol=1e-4), (loss, unaugmented)  # 10x the tolerance above
    for (name, p0), p1 in zip(before.named_parameters(), q_net.parameters()):
        if p0.dim() > 1:
            assert not torch.equal(p0, p1), name


# ------------------------------------------------------------------------------------------
# 6. 10-step returns at episode ends (tests/test_replay.py checks n = 3 on dqn_moe_atari.py)
# ------------------------------------------------------------------------------------------
G = 0.9


def stack_rows(batch_stacks):
    """(B, 4, 2, 2) stacks of frames valued row + 1 (0: before the episode) -> row ids, -1 for 0."""
    assert torch.all(batch_stacks == batch_stacks[..., :1, :1])
    return (batch_stacks[..., 0, 0].long() - 1).tolist()


def test_ten_step_returns_at_episode_ends():
    """FrameReplay(n_step=10): a transition whose episode terminates on its 3rd step has return
    r0 + g r1 + g^2 r2 and discount 0; one whose episode is truncated (add_final without a
    terminal) after 3 steps has discount g^3 and next_obs ending on the final frame; a full
    window sums 10 rewards with discount g^10 (0 when its 10th step terminates); next_obs is
    the stack k rows ahead. Every sampleable row is checked against a direct computation."""
    n = 10
    replay = drq.FrameReplay(100, (2, 2), n_step=n, gamma=G, stage_rows=7)
    log = []  # per row: (reward, terminated, final)

    def frame(row):
        return np.full((2, 2), row + 1, dtype=np.uint8)

    for steps, how in [(12, "terminated"), (5, "truncated"), (15, "open")]:
        for t in range(steps):
            row = len(log)
            term = how == "terminated" and t == steps - 1
            reward = 0.1 * (row + 1) * (-1) ** row
            replay.add(frame(row), row % 4, reward, term)
            log.append((reward, term, False))
        if how != "open":
            replay.add_final(frame(len(log)))
            log.append((0.0, False, True))
    replay.flush()
    # rows: 0-11 steps (11 terminated), 12 final; 13-17 steps, 18 final; 19-33 steps
    r = [x[0] for x in log]
    b = replay.gather(torch.tensor([9, 15, 0, 19, 2, 1]))
    ret, disc, nxt = b["return"].tolist(), b["discount"].tolist(), stack_rows(b["next_obs"])
    assert ret[0] == pytest.approx(r[9] + G * r[10] + G ** 2 * r[11]) and disc[0] == 0.0
    assert ret[1] == pytest.approx(r[15] + G * r[16] + G ** 2 * r[17])
    assert disc[1] == pytest.approx(G ** 3) and nxt[1] == [15, 16, 17, 18]
    assert ret[2] == pytest.approx(sum(G ** j * r[j] for j in range(10))) and disc[2] == pytest.approx(G ** 10)
    assert nxt[2] == [7, 8, 9, 10]
    assert ret[3] == pytest.approx(sum(G ** j * r[19 + j] for j in range(10))) and disc[3] == pytest.approx(G ** 10)
    assert nxt[3] == [26, 27, 28, 29]
    assert ret[4] == pytest.approx(sum(G ** j * r[2 + j] for j in range(10))) and disc[4] == 0.0  # 10th step ends it
    assert disc[5] == pytest.approx(G ** 10)

    lo, hi = replay.bounds.tolist()
    assert (lo, hi) == (0, len(log) - 1 - n)
    rows = [row for row in range(lo, hi + 1) if not log[row][2]]
    b = replay.gather(torch.tensor(rows))
    for i, row in enumerate(rows):
        k, total = 0, 0.0
        while k < n:
            total += G ** k * log[row + k][0]
            k += 1
            if log[row + k][2]:
                break
        discount = 0.0 if log[row + k - 1][1] else G ** k
        assert b["return"][i].item() == pytest.approx(total, abs=1e-5), row
        assert b["discount"][i].item() == pytest.approx(discount, abs=1e-7), row
        assert stack_rows(b["next_obs"][i: i + 1])[0][-1] == row + k, row


# ------------------------------------------------------------------------------------------
# 7. evaluation on a real game
# ------------------------------------------------------------------------------------------
class FixedPolicy:
    """eval_step: records the stacks it is shown and chooses a fixed action for each env, from
    Q-values that rise by 0.25 an action up to it and fall after it."""

    def __init__(self, eval_input, action, num_actions=4):
        self.eval_input, self.action, self.seen = eval_input, action, []
        self.q = -0.25 * (torch.arange(num_actions) - action).abs().float().expand(eval_input.shape[0], -1)

    def __call__(self):
        self.seen.append(self.eval_input.clone())
        return drq.greedy_choice(self.q)


def test_greedy_choice_gives_the_argmax_its_q_value_and_its_lead():
    """Per row: the argmax, its Q-value, and its lead over the second best action, 0 for a tie;
    half precision Q-values give float32 leads."""
    q = torch.tensor([[0.5, 2.0, -1.0, 1.5], [3.0, 3.0, 0.0, 0.0], [-2.0, -4.0, -1.0, -3.0]])
    actions, best, lead = drq.greedy_choice(q)
    assert actions.tolist() == [1, 0, 2] and best.tolist() == [2.0, 3.0, -1.0] and lead.tolist() == [0.5, 0.0, 1.0]
    assert drq.greedy_choice(q.half())[2].dtype == torch.float32


def run_eval(seed, **kw):
    args = dataclasses.replace(drq.Args(), **{"eval_episodes": 2, "max_episode_frames": 240, "eval_epsilon": 0.0,
                                              "max_noops": 0, **kw})
    env_id = drq.resolve_env_id("ALE/Breakout-v5")
    eval_input = torch.zeros((args.eval_episodes, 4, 84, 84), dtype=torch.uint8)
    policy = FixedPolicy(eval_input, action=1)  # FIRE: the ball is launched, the paddle stays
    result = drq.evaluate(args, env_id, policy, eval_input, 4, np.random.default_rng(seed))
    returns, lengths = result["eval_returns"], result["eval_lengths"]
    assert len(lengths) == len(returns) and result["eval_vector_steps"] == len(policy.seen)
    return returns, torch.stack(policy.seen)


def test_evaluate_runs_truncated_episodes_and_is_reproducible():
    """eval_episodes=2, max_episode_frames=240, epsilon 0, no no-ops: a list of 2 float returns
    after 60 agent steps (the frame limit truncates both episodes); the stacks shown to the
    policy start from zeros, shift by one frame per step, and start afresh after a lost life
    (--terminal-on-life-loss; Breakout's paddle that does not move loses lives); the same rng
    seed gives the same returns and the same stacks."""
    returns, seen = run_eval(0)
    assert isinstance(returns, list) and len(returns) == 2 and all(type(x) is float for x in returns)
    assert len(seen) == 240 // 4
    assert seen.dtype == torch.uint8 and seen.shape[1:] == (2, 4, 84, 84)
    assert (seen[0, :, :3] == 0).all() and (seen[0, :, 3] > 0).any()
    fresh = (seen[1:, :, :3] == 0).flatten(2).all(-1)  # (T-1, 2): a new stack at this step
    shifted = (seen[1:, :, :3] == seen[:-1, :, 1:]).flatten(2).all(-1)
    assert (fresh | shifted).all()
    assert fresh.any(dim=0).all() and shifted.sum() > 90
    again, seen_again = run_eval(0)
    assert again == returns and torch.equal(seen_again, seen)


def test_evaluate_reports_episode_lengths_without_the_noops():
    """With no-op starts the two truncated episodes last 60 vector steps, of which each spends its
    no-ops (the rng's draws after the emulators' seed) before its length starts to count; the
    network's choices are counted over the same agent steps."""
    args = dataclasses.replace(drq.Args(), eval_episodes=2, max_episode_frames=240, eval_epsilon=0.0, max_noops=10)
    eval_input = torch.zeros((2, 4, 84, 84), dtype=torch.uint8)
    result = drq.evaluate(args, drq.resolve_env_id("ALE/Breakout-v5"), FixedPolicy(eval_input, 1), eval_input, 4,
                          np.random.default_rng(1))
    lengths = result["eval_lengths"]
    draws = np.random.default_rng(1)
    draws.integers(2**31)
    noops = draws.integers(10, size=2)
    assert result["eval_vector_steps"] == 60 and lengths == [60 - k for k in noops.tolist()]
    assert result["eval_greedy_counts"] == [0, sum(lengths), 0, 0]
    assert result["eval_greedy_q_median"] == 0.0 and result["eval_q_margin_median"] == 0.25


def test_evaluate_epsilon_draws_from_the_rng():
    """eval_epsilon=0.5: whether to explore and the random actions are draws of the rng given:
    the same seed replays the same episodes, another seed plays other ones."""
    returns, seen = run_eval(0, eval_epsilon=0.5)
    assert len(returns) == 2 and len(seen) == 60
    again, seen_again = run_eval(0, eval_epsilon=0.5)
    assert again == returns and torch.equal(seen_again, seen)
    _, seen_other = run_eval(1, eval_epsilon=0.5)
    assert not torch.equal(seen_other, seen)


def test_evaluate_plays_the_same_episodes_on_any_number_of_threads():
    """--eval-threads spreads the evaluation's emulators over threads: the episodes, with epsilon
    0.5 so that the actions differ between them, are the same on two threads as on one."""
    returns, seen = run_eval(3, eval_epsilon=0.5, eval_threads=1)
    threaded, seen_threaded = run_eval(3, eval_epsilon=0.5, eval_threads=2)
    assert threaded == returns and torch.equal(seen_threaded, seen)


def test_evaluation_in_child_processes_plays_the_vector_envs_episodes(monkeypatch):
    """`EmulatorGroups`, the evaluation's environments under a frame skip cut at a lost life, spread
    3 episodes over 2 processes; with the full frame skip they play ale-py's vector env's
    episodes: the same returns and the same stacks shown to the policy, epsilon 0.5."""
    returns, seen = run_eval(2, eval_epsilon=0.5, eval_episodes=3)
    monkeypatch.setattr(drq, "evaluation_envs", lambda args, env_id, n: drq.EmulatorGroups(
        env_id, n, args.sticky_actions, args.max_episode_frames, 2, "full"))
    grouped, seen_grouped = run_eval(2, eval_epsilon=0.5, eval_episodes=3)
    assert grouped == returns and torch.equal(seen_grouped, seen)


def test_a_cut_evaluation_plays_the_one_environments_episode():
    """--life-loss-frame-skip cut_2021: each evaluation episode (FIRE, epsilon 0: Breakout's ball is
    lost again and again, to the game's end) is the episode of `make_env`'s environment with the cut,
    played alone: the same return and length, of which steps played fewer than four frames."""
    env = drq.make_env(drq.resolve_env_id("ALE/Breakout-v5"), 0, False, 1000, None, "cut_2021")
    env.reset(seed=0)
    total, length, over = 0.0, 0, False
    while not over:
        _, reward, terminated, truncated, _ = env.step(1)
        total, length, over = total + reward, length + 1, terminated or truncated
    args = dataclasses.replace(drq.Args(), eval_episodes=2, max_episode_frames=1000, eval_epsilon=0.0, max_noops=0,
                               life_loss_frame_skip="cut_2021")
    eval_input = torch.zeros((2, 4, 84, 84), dtype=torch.uint8)
    result = drq.evaluate(args, drq.resolve_env_id("ALE/Breakout-v5"), FixedPolicy(eval_input, 1), eval_input, 4,
                          np.random.default_rng(0))
    returns, lengths = result["eval_returns"], result["eval_lengths"]
    assert returns == [total, total] and lengths == [length, length]
    assert terminated and 4 * length > env.unwrapped.ale.getEpisodeFrameNumber()


def test_a_cut_evaluation_takes_its_no_op_frames_at_reset():
    """--noop-unit frame with a cut frame skip: each episode of the evaluation in processes starts
    with 0..29 NOOP emulator frames (drawn from the seed its reset gets), as the training's
    `noop_frames` takes them, its first observation still the game's first screen: the frames,
    return and length of playing each Asterix episode alone after its NOOP frames, which differ
    between the episodes."""
    env_id = drq.resolve_env_id("ALE/Asterix-v5")
    args = dataclasses.replace(drq.Args(), eval_episodes=3, max_episode_frames=600, eval_epsilon=0.0, max_noops=30,
                               noop_unit="frame", life_loss_frame_skip="cut")
    eval_input = torch.zeros((3, 4, 84, 84), dtype=torch.uint8)
    policy = FixedPolicy(eval_input, 1, num_actions=9)
    result = drq.evaluate(args, env_id, policy, eval_input, 9, np.random.default_rng(4))
    returns, lengths = result["eval_returns"], result["eval_lengths"]
    draws = np.random.default_rng(int(np.random.default_rng(4).integers(2**31)))
    seeds, noops = draws.integers(2**31, size=3), draws.integers(30, size=3)
    for e, (seed, k) in enumerate(zip(seeds.tolist(), noops.tolist())):
        env = drq.make_env(env_id, 0, False, 600, None, "cut")
        frames = [env.reset(seed=seed)[0]]
        drq.emulator_call(env, "noop_frames", k)
        total, over = 0.0, False
        while not over:
            obs, reward, terminated, truncated, _ = env.step(1)
            frames.append(obs)
            total, over = total + reward, terminated or truncated
        assert (returns[e], lengths[e]) == (total, len(frames) - 1)
        assert all(np.array_equal(policy.seen[t][e, -1].numpy(), frames[t]) for t in range(lengths[e]))
    assert len(set(noops.tolist())) > 1 and not torch.equal(policy.seen[5][0, -1], policy.seen[5][1, -1])


@pytest.mark.parametrize("flag, omp, cores, n, expected", [(0, "1", 16, 100, 16), (0, None, 16, 8, 8), (3, "1", 16, 100, 3),
                                                           (32, "1", 16, 10, 10)])
def test_eval_threads_take_the_cores_not_omp_num_threads(monkeypatch, flag, omp, cores, n, expected):
    """An evaluation's emulators get one thread per core the process may use (up to its episodes),
    not the share OMP_NUM_THREADS gives a run on a machine shared by several; --eval-threads sets it."""
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(drq.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert drq.evaluation_threads(dataclasses.replace(drq.Args(), eval_threads=flag), n) == expected


# ------------------------------------------------------------------------------------------
# 8. protocol flags
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("eval_episodes", -1), ("eval_every", -5), ("eval_threads", -2), ("max_noops", -1), ("eval_epsilon", -0.01), ("eval_epsilon", 1.5),
    ("eval_epsilon", float("nan")),
])
def test_validate_atari100k_args_rejects(field, value):
    args = dataclasses.replace(drq.Args(), **{field: value})
    with pytest.raises(SystemExit) as err:
        drq.validate_atari100k_args(args)
    message = str(err.value.code)
    assert message.startswith("error: ") and f"--{field.replace('_', '-')}" in message, message


@pytest.mark.parametrize("kw", [{}, dict(eval_episodes=0, eval_every=0, max_noops=0, eval_epsilon=0.0),
                                dict(eval_epsilon=1.0)])
def test_validate_atari100k_args_accepts(kw):
    drq.validate_atari100k_args(dataclasses.replace(drq.Args(), **kw))
