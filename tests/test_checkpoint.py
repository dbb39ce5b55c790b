"""The checkpoint block and the environment protocol, in isolation."""

import os

import pytest
import torch

import dqn_moe_atari as dqn


def adam_with_state(capturable):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=capturable)
    return net, opt


def test_optimizer_state_moves_between_captured_and_eager_runs():
    """A checkpoint of a --cudagraphs run (capturable Adam) resumes in an eager run and the
    other way round: load_state_dict alone would keep the saved `capturable` setting."""
    net, opt = adam_with_state(capturable=False)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    _, captured = adam_with_state(capturable=True)
    dqn.load_optimizer_state(captured, opt.state_dict(), capturable=True)
    assert all(g["capturable"] for g in captured.param_groups)
    saved_as_captured = captured.state_dict()
    assert saved_as_captured["param_groups"][0]["capturable"]

    net2, eager = adam_with_state(capturable=False)
    dqn.load_optimizer_state(eager, saved_as_captured, capturable=False)
    assert not any(g["capturable"] for g in eager.param_groups)
    net2(torch.randn(4, 3)).sum().backward()
    eager.step()  # raises if the loaded group still says capturable=True on the CPU
    assert all(float(s["step"]) == 2.0 for s in eager.state.values())


def test_checkpoint_is_written_atomically(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    dqn.save_checkpoint(path, {"a": torch.arange(3)})
    dqn.save_checkpoint(path, {"a": torch.arange(5)})
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind
    assert torch.equal(dqn.load_checkpoint(path)["a"], torch.arange(5))


def test_resume_flags_must_match():
    saved = dqn.dataclasses.asdict(dqn.Args())
    dqn.check_resume_flags(saved, dqn.Args(total_frames=10, cudagraphs=True, device="cpu"))  # may differ
    with pytest.raises(SystemExit, match="--impala-channels"):
        dqn.check_resume_flags(saved, dqn.Args(impala_channels=(32, 64, 64)))


@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "PongNoFrameskip-v4", "Pong-v4"])
def test_every_ale_id_gets_the_dopamine_protocol(env_id):
    env = dqn.make_env(dqn.resolve_env_id(env_id), 0, sticky_actions=True, max_episode_frames=108_000)
    ale = env.unwrapped.ale
    assert env.sticky_probability == 0.25 and ale.getFloat("repeat_action_probability") == 0  # drawn by the wrapper
    assert env.unwrapped._frameskip == 1  # the 4-frame skip with max-pooling is AtariPreprocessing's
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84)
    env.close()
