"""FrameReplay of dqn_moe_atari.py against a slow Python model of the stored episodes.

Every row gets a 2x2 frame filled with an identifiable value (global row id % 250 + 1), so the
row a stacked frame came from can be read back; 0 marks a zeroed (pre-episode) frame."""

import math

import pytest
import torch

import dqn_moe_atari as dqn

GAMMA = 0.9


def value(row):
    return row % 250 + 1


def frame(row):
    return torch.full((2, 2), value(row), dtype=torch.uint8).numpy()


def fill(replay, episodes, log=None):
    """Add episodes; each is (num_steps, how) with how in 'terminated', 'truncated' (both end with
    add_final) or 'open' (still running, last only). Returns the log: one dict per global row."""
    log = [] if log is None else log
    for steps, how in episodes:
        ep = 1 + max((r["ep"] for r in log), default=-1)
        for t in range(steps):
            row = len(log)
            term = how == "terminated" and t == steps - 1
            reward = float(row % 7 - 3)
            replay.add(frame(row), row % 5, reward, term)
            log.append(dict(ep=ep, action=row % 5, reward=reward, terminated=term, final=False))
        if how != "open":
            replay.add_final(frame(len(log)))
            log.append(dict(ep=ep, action=0, reward=0.0, terminated=False, final=True))
    replay.flush()
    return log


def ref_stack(log, row, stack=4):
    """Values of the stack whose newest frame is `row`, oldest first, 0 before the episode."""
    return [value(r) if r >= 0 and log[r]["ep"] == log[row]["ep"] else 0 for r in range(row - stack + 1, row + 1)]


def ref_transition(log, row, n, gamma=GAMMA):
    """n-step return, discount and next-stack row, stopping at the episode's final row."""
    ret, k = 0.0, 0
    for j in range(n):
        ret += gamma ** j * log[row + j]["reward"]
        k += 1
        if log[row + j + 1]["final"]:
            break
    discount = 0.0 if log[row + k - 1]["terminated"] else gamma ** k
    return ret, discount, row + k


def valid_rows(log, capacity, n, stack=4):
    """Rows that start a transition: not final, stack not overwritten, n successors written."""
    added = len(log)
    return [r for r in range(max(0, added - capacity + stack - 1), added - n) if not log[r]["final"]]


def stack_values(stacks):
    """(B, 4, 2, 2) uint8 stacks -> list of per-frame values (checking each frame is uniform)."""
    assert torch.all(stacks == stacks[..., :1, :1])
    return stacks[..., 0, 0].long().tolist()


def check_rows(replay, log, rows, n):
    batch = replay.gather(torch.tensor(rows))
    obs, nxt = stack_values(batch["obs"]), stack_values(batch["next_obs"])
    for i, r in enumerate(rows):
        ret, discount, next_row = ref_transition(log, r, n)
        assert obs[i] == ref_stack(log, r), r
        assert nxt[i] == ref_stack(log, next_row), r
        assert batch["action"][i].item() == log[r]["action"]
        assert batch["return"][i].item() == pytest.approx(ret, abs=1e-5), r
        assert batch["discount"][i].item() == pytest.approx(discount, abs=1e-6), r


EPISODES = [(6, "terminated"), (2, "truncated"), (1, "terminated"), (5, "truncated"), (3, "terminated"), (4, "open")]


# ------------------------------------------------------------------------------------------
def test_stacks_one_step():
    """n=1: obs is the 4 latest frames of the episode, oldest first, zeros before its start;
    next_obs is the stack of the next row (the final frame after the last step)."""
    replay = dqn.FrameReplay(100, (2, 2), n_step=1, gamma=GAMMA, stage_rows=4)
    log = fill(replay, EPISODES)
    assert replay.can_sample()
    rows = valid_rows(log, 100, 1)
    check_rows(replay, log, rows, 1)
    # spot checks written out: first step of episode 0 and its last (terminated) step
    b = replay.gather(torch.tensor([0, 5]))
    assert stack_values(b["obs"]) == [[0, 0, 0, 1], [3, 4, 5, 6]]
    assert stack_values(b["next_obs"]) == [[0, 0, 1, 2], [4, 5, 6, 7]]


def test_episode_boundaries():
    """A terminated step has discount 0; a truncated last step has discount gamma and a
    next_obs ending with the final frame; the next episode's first stack is zero-padded."""
    replay = dqn.FrameReplay(100, (2, 2), n_step=1, gamma=GAMMA)
    fill(replay, [(5, "terminated"), (5, "truncated"), (3, "open")])
    # rows: 0-4 steps (4 terminated), 5 final, 6-10 steps, 11 final, 12-14 steps
    b = replay.gather(torch.tensor([4, 10, 12]))
    assert b["discount"].tolist() == pytest.approx([0.0, GAMMA, GAMMA])
    assert stack_values(b["next_obs"])[1] == [value(8), value(9), value(10), value(11)]
    assert stack_values(b["obs"])[2] == [0, 0, 0, value(12)]
    assert stack_values(b["next_obs"])[2] == [0, 0, value(12), value(13)]


def test_final_rows_never_sampled():
    """Rows added by add_final hold no transition: sampling never returns them, even when half
    the rows are final (one-step episodes), and every returned row is a valid transition."""
    torch.manual_seed(0)
    replay = dqn.FrameReplay(200, (2, 2), n_step=1, gamma=GAMMA)
    log = fill(replay, [(1, "truncated")] * 30 + [(4, "terminated"), (3, "open")])
    ok = set(valid_rows(log, 200, 1))
    seen = set()
    for _ in range(200):
        rows = replay.sample_rows(64)
        assert not replay.final[rows % replay.capacity].any()
        seen.update(rows.tolist())
    assert seen == ok


@pytest.mark.parametrize("capacity", [200, 23])
def test_n_step_against_reference(capacity):
    """n=3, gamma=0.9: return = sum_k gamma^k r_{t+k} stopping at the episode end, discount =
    gamma^k (0 if terminated), next_obs = the stack k rows ahead, for every valid row (also
    after wrap-around, capacity 23)."""
    replay = dqn.FrameReplay(capacity, (2, 2), n_step=3, gamma=GAMMA, stage_rows=5)
    log = fill(replay, EPISODES[:-1] * 2 + EPISODES[-1:])
    rows = valid_rows(log, capacity, 3)
    assert len(rows) > 10
    check_rows(replay, log, rows, 3)
    # a 3-step return spelled out: episode 0 rows 0..5, rewards r = row % 7 - 3
    b = replay.gather(torch.tensor([0, 4]))
    if capacity == 200:
        assert b["return"].tolist() == pytest.approx([-3 + 0.9 * -2 + 0.81 * -1, 1 + 0.9 * 2])
        assert b["discount"].tolist() == pytest.approx([0.9 ** 3, 0.0])


def test_wrap_around_sampling():
    """Capacity 20, 50 rows: sampled rows lie in [added-capacity+3, added-1-n] and their stacks
    only hold frames of rows still in the buffer, equal to the reference stacks."""
    torch.manual_seed(0)
    cap, n = 20, 1
    replay = dqn.FrameReplay(cap, (2, 2), n_step=n, gamma=GAMMA, stage_rows=7)
    log = fill(replay, [(9, "terminated"), (12, "truncated"), (11, "terminated"), (7, "truncated"), (7, "open")])
    added = len(log)
    assert added == 50
    lo, hi = added - cap + 3, added - 1 - n
    assert not log[lo]["final"]
    live = {value(r) for r in range(added - cap, added)} | {0}
    rows = torch.cat([replay.sample_rows(64) for _ in range(50)])
    assert rows.min() >= lo and rows.max() <= hi
    assert set(rows.tolist()) == set(valid_rows(log, cap, n))
    batch = replay.gather(rows)
    for stacks in (batch["obs"], batch["next_obs"]):
        assert set(stacks.unique().tolist()) <= live
    check_rows(replay, log, sorted(set(rows.tolist())), n)


@pytest.mark.parametrize("episodes", [[(60, "open")], [(30, "truncated"), (30, "open")]],
                         ids=["one-episode", "final-row-inside"])
def test_sampling_is_uniform(episodes):
    """Sampled rows are uniform over the valid rows: a chi-square statistic within ~5 sigma
    of its mean; a sampler covering half the range, or skewed by the final-row retries, fails."""
    torch.manual_seed(0)
    replay = dqn.FrameReplay(100, (2, 2), n_step=1, gamma=GAMMA)
    log = fill(replay, episodes)
    valid = valid_rows(log, 100, 1)
    rows = torch.cat([replay.sample_rows(1000) for _ in range(20)])
    counts = torch.bincount(rows, minlength=len(log)).double()
    assert counts[[r for r in range(len(log)) if r not in valid]].sum() == 0
    k = len(valid)
    expected = len(rows) / k
    chi2 = ((counts[valid] - expected) ** 2 / expected).sum().item()
    assert chi2 < (k - 1) + 5 * math.sqrt(2 * (k - 1)), chi2


def test_state_dict_round_trip():
    """A fresh replay loaded from state_dict (staged rows included) gives identical samples
    under the same seed and continues the episode identically."""
    cap = 20
    a = dqn.FrameReplay(cap, (2, 2), n_step=3, gamma=GAMMA, stage_rows=8)
    log = fill(a, [(9, "terminated"), (12, "truncated"), (10, "terminated"), (8, "truncated")])
    a.add(frame(len(log)), 1, 1.0, False)  # staged, not flushed: state_dict must flush it
    a.add(frame(len(log) + 1), 2, -1.0, False)
    state = a.state_dict()
    b = dqn.FrameReplay(cap, (2, 2), n_step=3, gamma=GAMMA)
    b.load_state_dict(state)
    assert b.added == a.added == len(log) + 2 and b.can_sample()
    for r in (a, b):
        r.add(frame(len(log) + 2), 3, 0.5, False)
        r.add(frame(len(log) + 3), 4, 0.5, True)
        r.add_final(frame(len(log) + 4))
        r.flush()
    for f in a.fields:
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    torch.manual_seed(7)
    sa = a.sample(32)
    torch.manual_seed(7)
    sb = b.sample(32)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_can_sample_and_flush():
    """Nothing is sampleable before n+1 rows are flushed; staged rows do not count until flush."""
    replay = dqn.FrameReplay(50, (2, 2), n_step=3, gamma=GAMMA)
    assert not replay.can_sample()
    for r in range(4):
        replay.add(frame(r), 0, 0.0, False)
    assert not replay.can_sample() and replay.rows == 4 and replay.added == 0
    replay.flush()
    assert replay.can_sample() and replay.added == 4
    assert replay.sample_rows(16).tolist() == [0] * 16


def test_fallback_row_stays_in_window():
    """When all the sampler's candidates are final rows it falls back to the row before the
    first one; that row must still be in [added-capacity+3, added-1-n]. Adversarial buffer:
    after wrap-around the oldest sampleable row (33) is a final row that ends a long episode,
    and half the rows are final (one-step episodes), so the fallback often starts at row 33:
    row 32's stack would read row 29's slot, already overwritten by row 49."""
    torch.manual_seed(0)
    cap = 20
    replay = dqn.FrameReplay(cap, (2, 2), n_step=1, gamma=GAMMA)
    log = fill(replay, [(33, "truncated")] + [(1, "truncated")] * 8)
    added = len(log)
    lo, hi = added - cap + 3, added - 2
    assert log[lo]["final"] and not log[lo - 1]["final"]
    rows = torch.cat([replay.sample_rows(64) for _ in range(50)])
    assert not replay.final[rows % cap].any()
    assert rows.min() >= lo and rows.max() <= hi
    live = {value(r) for r in range(added - cap, added)} | {0}
    assert set(replay.gather(rows)["obs"].unique().tolist()) <= live


@pytest.mark.parametrize("prioritized", [False, True])
def test_flush_writes_rows_where_row_by_row_writes_would(prioritized):
    """flush copies staged rows straight into the ring: chunks that end at, cross and exceed the
    buffer's end leave every field as writing each row at position row % capacity would; new rows
    of the prioritised replay enter with the largest priority, older ones keep theirs."""
    import rainbow_moe_atari as rainbow
    cap, stage = 12, 32
    cls = rainbow.PrioritizedFrameReplay if prioritized else rainbow.FrameReplay
    replay = cls(cap, (2, 2), n_step=1, gamma=GAMMA, stage_rows=stage)
    rows = []  # (frame value, action, reward, terminated) of every row, in order
    for chunk in (5, 7, 3, 12, 1, 27, 4):  # 5+7 ends at the buffer's end; 27 > 2 x capacity
        for _ in range(chunk):
            r = len(rows)
            rows.append((value(r), r % 5, float(r % 3), r % 4 == 0))
            replay.add(frame(r), r % 5, float(r % 3), r % 4 == 0)
        if prioritized:
            replay.priorities.fill_(0.25)
            replay.max_priority.fill_(2.0)
        replay.flush()
        assert replay.added == len(rows)
        for r in range(max(0, len(rows) - cap), len(rows)):
            at = r % cap
            v, action, reward, term = rows[r]
            assert replay.frames[at].eq(v).all() and replay.actions[at] == action, (chunk, r)
            assert replay.rewards[at] == reward and bool(replay.terminated[at]) == term, (chunk, r)
            if prioritized:
                assert replay.priorities[at] == (2.0 if r >= len(rows) - chunk else 0.25), (chunk, r)


def test_a_lost_life_ends_the_episode_without_a_final_row():
    """A terminated row followed by a row that starts the next episode (`start_rows(starts=...)`,
    a lost life while the game goes on): n-step returns stop at the terminated row with discount
    0, and the new episode's stacks begin from zeros, as after a final row."""
    n = 3
    replay = dqn.FrameReplay(50, (2, 2), n_step=n, gamma=GAMMA)
    rewards = [1.0, -1.0, 0.5, 2.0, 1.0, -0.5, 1.0, 1.0, 0.0, 1.0]
    life_lost_at = 3
    for row, reward in enumerate(rewards):
        replay.start_rows(frame(row)[None], [False], starts=[row == life_lost_at + 1])
        replay.finish_rows([row % 5], [reward], [row == life_lost_at])
    replay.flush()
    starts = torch.arange(0, len(rewards) - n)
    b = replay.gather(starts)
    for i, r in enumerate(starts.tolist()):
        stop = life_lost_at if r <= life_lost_at else len(rewards)
        k = min(n, stop - r + 1)
        expected = sum(GAMMA ** j * rewards[r + j] for j in range(k))
        assert b["return"][i].item() == pytest.approx(expected, abs=1e-6), r
        assert b["discount"][i].item() == pytest.approx(0.0 if r + k - 1 == life_lost_at else GAMMA ** k), r
        first_of_episode = 0 if r <= life_lost_at else life_lost_at + 1
        for back in range(4):  # the stack's frames from before its episode are zeros
            shown = b["obs"][i, 3 - back, 0, 0].item()
            assert shown == (value(r - back) if r - back >= first_of_episode else 0), (r, back)
