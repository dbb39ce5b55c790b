"""Does a Soft MoE learn to route in DrQ(eps)? (issue 8: Soft MoE-4 against the baseline at 100k)

In the fidelity sweep, DrQ(eps) with Soft MoE-4 keeps its dispatch and combine weights uniform for
all 100k steps (normalised entropies above 0.9999 in every run's `summary.jsonl`). Uniform
weights make every slot the mean of the 121 tokens, and every output token the same mixture of
the experts' outputs: the head reads an average-pooled image, its positions lost. This probe
measures, on the CPU, with DrQ(eps)'s own network (Nature CNN, PerConv tokens) and optimiser:

  - the routing logits' spread over the tokens at initialisation, which sets the entropies;
  - the gradient of the routing weights Phi, against Adam's epsilon (1.5e-4 in DrQ(eps)):
    where a gradient is far below epsilon, Adam moves the weight by lr * g / eps, a small
    fraction of its step size lr;
  - the gradient of the encoder's weights, against the same epsilon, in the Soft MoE network and
    in the baseline's (no MoE) at initialisation: uniform routing hands each of the 121 tokens
    1/121 of the pooled token's gradient, so the encoder behind it may learn at a fraction of the
    baseline's pace;
  - what T Adam steps of a one-step TD loss on frames of random play do to the entropies and to
    the tokens' spread (how far the output tokens are from their mean, relative to it; 0 is
    pooling), with Adam's epsilon as DrQ(eps) sets it and with 1e-8.

The loss is a stand-in for the agent's (one-step targets from the network itself, no
augmentation, frames of random play): it measures how the routing weights' scale meets Adam's,
not a learning curve.

    python benchmark/soft_moe_routing.py --game Pong --frames 2000 --updates 1000 \\
        --out benchmark/results/soft_moe_routing_pong.json          # --normalize: l2-normalised routing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import drq_moe_atari100k as drq  # noqa: E402  (its network, environment and metrics)


def random_play(game: str, frames: int, seed: int) -> dict:
    """`frames` agent steps of uniformly random actions, stacked 4 to a state like the agent's
    replay (no no-op starts; a new game after each episode)."""
    env = drq.make_env(drq.resolve_env_id(game), seed, False, 108_000)
    rng = np.random.default_rng(seed)
    screen, _ = env.reset(seed=seed)
    stack = [screen] * 4
    obs, next_obs, actions, rewards, dones = [], [], [], [], []
    for _ in range(frames):
        action = int(rng.integers(env.action_space.n))
        screen, reward, terminated, truncated, _ = env.step(action)
        obs.append(np.stack(stack))
        stack = stack[1:] + [screen]
        next_obs.append(np.stack(stack))
        actions.append(action)
        rewards.append(float(np.sign(reward)))
        dones.append(terminated)
        if terminated or truncated:
            screen, _ = env.reset()
            stack = [screen] * 4
    env.close()
    return {"obs": torch.from_numpy(np.stack(obs)), "next_obs": torch.from_numpy(np.stack(next_obs)),
            "action": torch.tensor(actions), "reward": torch.tensor(rewards),
            "done": torch.tensor(dones, dtype=torch.float32), "num_actions": int(env.action_space.n)}


def routing_state(q_net, obs: torch.Tensor) -> dict:
    """Entropies of the routing weights, the logits' spread over tokens, and how far the output
    tokens lie from their mean (relative to the mean's norm) on a batch of states."""
    with torch.no_grad():
        tokens = drq.tokenize(q_net.torso.encoder(drq.preprocess(obs)), q_net.torso.tokenizer)
        moe = q_net.torso.moe
        logits = moe.router(tokens)  # (B, m, E * p)
        out, aux = moe(tokens)  # (B, m, d)
        usage = drq.expert_usage(aux, moe.num_experts)
        mean_token = out.mean(dim=1, keepdim=True)
        spread = ((out - mean_token).norm(dim=-1).mean(dim=1) / mean_token.squeeze(1).norm(dim=-1)).mean()
        return {"dispatch_entropy": usage["dispatch_entropy"], "combine_entropy": usage["combine_entropy"],
                "logit_std_over_tokens": logits.std(dim=1).mean().item(),
                "token_norm": tokens.norm(dim=-1).mean().item(), "output_token_spread": spread.item()}


def td_loss(q_net, batch: dict, gamma: float) -> torch.Tensor:
    q, _ = q_net(batch["obs"])
    with torch.no_grad():
        target = batch["reward"] + gamma * (1 - batch["done"]) * q_net(batch["next_obs"])[0].max(dim=1).values
    return F.smooth_l1_loss(q[torch.arange(len(q)), batch["action"]], target)


def rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def soft_moe_network(num_actions: int, seed: int, moe: str = "soft", **args):
    """DrQ(eps)'s network with Soft MoE-4 (or `moe`), initialised from `seed`; `args` go to the agent's Args."""
    torch.manual_seed(seed)
    return drq.RainbowNetwork(drq.Args(moe=moe, num_experts=4, **args), num_actions)


def encoder_rms(q_net) -> float:
    return rms(torch.cat([p.grad.flatten() for p in q_net.torso.encoder.parameters()]))


def encoder_gradient_at_init(data: dict, seed: int, batch_size: int, gamma: float, encoder: str,
                             batches: int = 20) -> dict:
    """The median over `batches` random batches of the encoder's gradient RMS at initialisation,
    in the Soft MoE-4 network and in the baseline's (the same seed, so the same encoder weights)."""
    out = {}
    for moe in ("none", "soft"):
        q_net = soft_moe_network(data["num_actions"], seed, moe=moe, encoder=encoder)
        gen, values = torch.Generator().manual_seed(seed + 2), []
        for _ in range(batches):
            idx = torch.randint(len(data["obs"]), (batch_size,), generator=gen)
            q_net.zero_grad()
            td_loss(q_net, {k: v[idx] for k, v in data.items() if k != "num_actions"}, gamma).backward()
            values.append(encoder_rms(q_net))
        out[moe] = float(np.median(values))
    return out


def td_gradient_rms(q_net, batch: dict, gamma: float) -> dict:
    """Backpropagates the TD loss of `batch` (the gradients stay for a step) and returns the
    gradient RMS of Phi, of the experts, of the advantage head and of the encoder."""
    q_net.zero_grad()
    td_loss(q_net, batch, gamma).backward()
    experts = torch.cat([p.grad.flatten() for p in q_net.torso.moe.experts.parameters()])
    return {"phi": rms(q_net.torso.moe.router.phi.grad), "experts": rms(experts), "head": rms(q_net.advantage.weight.grad),
            "encoder": encoder_rms(q_net)}


def train(data: dict, adam_eps: float, updates: int, seed: int, batch_size: int, lr: float, gamma: float,
          normalize: bool = False, encoder: str = "nature") -> dict:
    """A fresh Soft MoE-4 DrQ(eps) network, `updates` Adam steps of the TD loss on random batches."""
    q_net = soft_moe_network(data["num_actions"], seed, normalize=normalize, encoder=encoder)
    phi = q_net.torso.moe.router.phi
    optimizer = torch.optim.Adam(q_net.parameters(), lr=lr, eps=adam_eps)
    probe = data["obs"][torch.randperm(len(data["obs"]), generator=torch.Generator().manual_seed(seed))[:64]]
    phi_start = phi.detach().clone()
    rows, grads = [{"update": 0, **routing_state(q_net, probe)}], {"phi": [], "experts": [], "head": [], "encoder": []}
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(1, updates + 1):
        idx = torch.randint(len(data["obs"]), (batch_size,), generator=gen)
        batch = {k: v[idx] for k, v in data.items() if k != "num_actions"}
        for part, value in td_gradient_rms(q_net, batch, gamma).items():
            grads[part].append(value)
        optimizer.step()
        if step % max(1, updates // 4) == 0 or step == updates:
            rows.append({"update": step, **routing_state(q_net, probe)})
    return {"adam_eps": adam_eps, "states": rows,
            "grad_rms": {k: float(np.median(v)) for k, v in grads.items()},
            "phi_rms_start": rms(phi_start), "phi_rms_change": rms(phi.detach() - phi_start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--frames", type=int, default=2000, help="agent steps of random play to learn from")
    parser.add_argument("--updates", type=int, default=1000, help="Adam steps for each epsilon")
    parser.add_argument("--adam-eps", type=float, nargs="+", default=[1.5e-4, 1e-8],
                        help="Adam epsilons to compare (DrQ(eps)'s first)")
    parser.add_argument("--normalize", action="store_true",
                        help="the router's l2 normalisation with a learned scale (the agents' --normalize)")
    parser.add_argument("--encoder", choices=["nature", "impala"], default="nature",
                        help="DrQ(eps)'s Nature CNN, or the Impala ResNet of the paper's figures 12 and 16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file of the measurements")
    opts = parser.parse_args()
    started = time.time()
    data = random_play(opts.game, opts.frames, opts.seed)
    defaults = drq.Args()
    results = [train(data, eps, opts.updates, opts.seed, defaults.batch_size, defaults.learning_rate, defaults.gamma,
                     opts.normalize, opts.encoder) for eps in opts.adam_eps]
    print(f"{opts.game}: {opts.frames} frames of random play, {opts.updates} Adam steps (lr {defaults.learning_rate}), "
          f"Soft MoE-4 on the {opts.encoder} encoder's PerConv tokens" + (", l2-normalised routing" if opts.normalize else ""))
    print("| Adam eps | update | dispatch entropy | combine entropy | logit std over tokens | output token spread |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for s in r["states"]:
            print(f"| {r['adam_eps']:g} | {s['update']} | {s['dispatch_entropy']:.6f} | {s['combine_entropy']:.6f} "
                  f"| {s['logit_std_over_tokens']:.4f} | {s['output_token_spread']:.4f} |")
    print("\n| Adam eps | median gradient RMS: Phi | experts | advantage head | encoder | Phi RMS at start | Phi RMS change |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        g = r["grad_rms"]
        print(f"| {r['adam_eps']:g} | {g['phi']:.2e} | {g['experts']:.2e} | {g['head']:.2e} | {g['encoder']:.2e} "
              f"| {r['phi_rms_start']:.4f} | {r['phi_rms_change']:.2e} |")
    at_init = encoder_gradient_at_init(data, opts.seed, defaults.batch_size, defaults.gamma, opts.encoder)
    print(f"\nthe encoder's gradient RMS at initialisation (median of 20 batches): baseline {at_init['none']:.2e}, "
          f"Soft MoE-4 {at_init['soft']:.2e} ({at_init['soft'] / at_init['none']:.3g} of the baseline's)")
    record = {"game": opts.game, "frames": opts.frames, "updates": opts.updates, "seed": opts.seed,
              "normalize": opts.normalize, "encoder": opts.encoder,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "seconds": round(time.time() - started, 1), "results": results,
              "encoder_grad_rms_at_init": at_init}
    print(f"\n{record['seconds']} s")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
