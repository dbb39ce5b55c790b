"""The official code's Soft MoE at initialisation, beside ours (issue 8: is the uniform routing ours?)

`benchmark/soft_moe_routing.py` found that DrQ(eps)'s Soft MoE-4 routes uniformly and that its
routing weights Phi get a gradient about 1,000 times below Adam's epsilon. This runs the same
measurement on the official JAX network: Dopamine's `FullRainbowMoENetwork` as the Atari 100k
MoE agents build it (`encoder_type='CNN'`, 4 experts, Soft MoE, PerConv tokens; DrQ(eps)'s head:
dueling, not noisy, one atom), initialised by flax, on the same frames of random play, and ours
beside it. At initialisation: the routing entropies, the logits' spread over tokens, the tokens'
norm, and the gradient RMS of Phi, of the experts and of the advantage head under a one-step TD
loss, the median over batches.

Needs JAX, flax, chex, gin-config and absl-py (not in requirements.txt: `pip install jax flax
chex gin-config absl-py`), and Dopamine's sources at commit 0a5b581 (the paper's version of
`dopamine/labs/moes`), which `--dopamine` points at. The modules that the MoE networks import but
do not use here (atari_lib's result types, tensorflow_probability, the continuous networks) are
stood in for, so TensorFlow is not needed.

    python benchmark/official_soft_moe_routing.py --dopamine /path/to/dopamine --game Pong \\
        --out benchmark/results/official_soft_moe_routing_pong.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soft_moe_routing as ours  # noqa: E402  (our probe, our network, the frames)

torch, drq = ours.torch, ours.drq


def import_official_networks(dopamine_root: str):
    """dopamine.labs.moes.architectures.networks, with stand-ins for what it imports and we skip."""
    sys.path.insert(0, dopamine_root)
    atari_lib = types.ModuleType("dopamine.discrete_domains.atari_lib")
    atari_lib.DQNNetworkType = collections.namedtuple("dqn_network", ["q_values"])
    atari_lib.RainbowNetworkType = collections.namedtuple("c51_network", ["q_values", "logits", "probabilities"])
    atari_lib.ImplicitQuantileNetworkType = collections.namedtuple("iqn_network", ["quantile_values", "quantiles"])
    discrete = types.ModuleType("dopamine.discrete_domains")
    discrete.atari_lib = atari_lib
    tfp = types.ModuleType("tensorflow_probability")
    tfp.substrates = types.ModuleType("tensorflow_probability.substrates")
    tfp.substrates.jax = types.ModuleType("tensorflow_probability.substrates.jax")
    sys.modules.update({
        "dopamine.discrete_domains": discrete, "dopamine.discrete_domains.atari_lib": atari_lib,
        "dopamine.jax.continuous_networks": types.ModuleType("dopamine.jax.continuous_networks"),
        "tensorflow_probability": tfp, "tensorflow_probability.substrates": tfp.substrates,
        "tensorflow_probability.substrates.jax": tfp.substrates.jax})
    from dopamine.labs.moes.architectures import networks
    return networks


def entropies(logits: np.ndarray) -> dict:
    """Normalised entropies of the dispatch (softmax over tokens) and combine (over slots) weights,
    logits (B, m, S): the same definitions as the agents' metrics."""
    t = torch.from_numpy(np.array(logits, dtype=np.float32))
    dispatch, combine = drq.soft_moe_weights(t)
    usage = drq.expert_usage({"dispatch": dispatch, "combine": combine}, 4)
    return {"dispatch_entropy": usage["dispatch_entropy"], "combine_entropy": usage["combine_entropy"],
            "logit_std_over_tokens": t.std(dim=1).mean().item()}


def official_measurements(networks, data: dict, batches: list, seed: int, gamma: float) -> dict:
    import jax
    import jax.numpy as jnp

    net = networks.FullRainbowMoENetwork(
        num_actions=data["num_actions"], num_atoms=1, noisy=False, dueling=True, distributional=False,
        num_experts=4, moe_type="SOFTMOE", encoder_type="CNN")
    hwc = lambda obs: jnp.asarray(obs.permute(0, 2, 3, 1).numpy())  # (B, 84, 84, 4), as Dopamine stacks
    key = jax.random.PRNGKey(seed)
    support = jnp.ones(1)  # one atom: the support is unused
    params = net.init(key, hwc(data["obs"][:1])[0], support, key=key)
    p = params["params"]
    encoder = networks.RainbowCNNet()
    probe = hwc(data["obs"][batches[0]])
    tokens = jax.vmap(lambda x: encoder.apply({"params": p["encoder"]}, x / 255.0).reshape(-1, 64))(probe)
    phi = p["SoftMoE_0"]["phi_weights"]
    logits = jnp.einsum("bmd,dnp->bmnp", tokens, phi).reshape(tokens.shape[0], tokens.shape[1], -1)

    def q_values(prm, obs):
        return jax.vmap(lambda x: net.apply(prm, x, support, key=key).q_values)(obs)

    def td_loss(prm, obs, action, reward, done, next_obs):
        q = q_values(prm, obs)[jnp.arange(obs.shape[0]), action]
        target = jax.lax.stop_gradient(reward + gamma * (1 - done) * q_values(prm, next_obs).max(axis=1))
        err = q - target
        return jnp.mean(jnp.where(jnp.abs(err) < 1, 0.5 * err ** 2, jnp.abs(err) - 0.5))  # Huber, delta 1

    grad_fn = jax.jit(jax.grad(td_loss))
    rms = lambda t: float(jnp.sqrt(jnp.mean(jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(t)]) ** 2)))
    grads = collections.defaultdict(list)
    for idx in batches:
        g = grad_fn(params, hwc(data["obs"][idx]), jnp.asarray(data["action"][idx].numpy()),
                    jnp.asarray(data["reward"][idx].numpy()), jnp.asarray(data["done"][idx].numpy()),
                    hwc(data["next_obs"][idx]))["params"]
        grads["phi"].append(rms(g["SoftMoE_0"]["phi_weights"]))
        grads["experts"].append(rms(g["ExpertModel_0"]))  # flax names the vmapped experts at the top
        grads["head"].append(rms(g["Dense_0"]["kernel"]))  # the first Dense after the MoE: the advantage
    return {**entropies(np.asarray(logits)), "token_norm": float(jnp.linalg.norm(tokens, axis=-1).mean()),
            "phi_std": float(phi.std()), "grad_rms": {k: float(np.median(v)) for k, v in grads.items()},
            "num_params": int(sum(x.size for x in jax.tree_util.tree_leaves(p)))}


def our_measurements(data: dict, batches: list, seed: int, gamma: float) -> dict:
    q_net = ours.soft_moe_network(data["num_actions"], seed)
    state = ours.routing_state(q_net, data["obs"][batches[0]])
    grads = collections.defaultdict(list)
    for idx in batches:
        batch = {k: v[idx] for k, v in data.items() if k != "num_actions"}
        for part, value in ours.td_gradient_rms(q_net, batch, gamma).items():
            grads[part].append(value)
    return {**{k: state[k] for k in ("dispatch_entropy", "combine_entropy", "logit_std_over_tokens", "token_norm")},
            "phi_std": q_net.torso.moe.router.phi.std().item(),
            "grad_rms": {k: float(np.median(v)) for k, v in grads.items()},
            "num_params": sum(p.numel() for p in q_net.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dopamine", required=True, help="folder holding Dopamine's `dopamine` package (commit 0a5b581)")
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--frames", type=int, default=2000, help="agent steps of random play")
    parser.add_argument("--batches", type=int, default=20, help="batches of 32 for the gradients' median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file of the measurements")
    opts = parser.parse_args()
    if not os.path.isdir(os.path.join(opts.dopamine, "dopamine", "labs", "moes")):
        sys.exit(f"error: no dopamine/labs/moes under {opts.dopamine}: pass the folder that holds Dopamine's package")
    networks = import_official_networks(opts.dopamine)
    data = ours.random_play(opts.game, opts.frames, opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    batches = [torch.randint(len(data["obs"]), (32,), generator=gen) for _ in range(opts.batches)]
    gamma = drq.Args().gamma
    rows = {"official (JAX, Dopamine 0a5b581)": official_measurements(networks, data, batches, opts.seed, gamma),
            "ours (PyTorch)": our_measurements(data, batches, opts.seed, gamma)}
    print(f"{opts.game}, {opts.frames} frames of random play; DrQ(eps) Soft MoE-4 (Nature CNN) at initialisation; "
          f"gradients: median over {opts.batches} batches of 32 of a one-step TD loss")
    print("| network | parameters | Phi std | token norm | logit std over tokens | dispatch entropy | combine entropy "
          "| gradient RMS: Phi | experts | advantage head |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        g = r["grad_rms"]
        print(f"| {name} | {r['num_params']:,} | {r['phi_std']:.4f} | {r['token_norm']:.3f} "
              f"| {r['logit_std_over_tokens']:.4f} | {r['dispatch_entropy']:.6f} | {r['combine_entropy']:.6f} "
              f"| {g['phi']:.2e} | {g['experts']:.2e} | {g['head']:.2e} |")
    if opts.out:
        import jax
        with open(opts.out, "w") as f:
            json.dump({"game": opts.game, "frames": opts.frames, "batches": opts.batches, "seed": opts.seed,
                       "jax": jax.__version__, "torch": torch.__version__, "rows": rows}, f, indent=1)
        print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
