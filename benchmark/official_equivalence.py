"""Our agents' updates against Dopamine's own, weight for weight (issue 8: is the port exact?)

`official_soft_moe_routing.py` compared the two networks at initialisation, each with its own
random weights. This copies the official network's initial weights into ours and runs the
official agent's own update function beside ours:

  - forward: the Q-values and, for the Soft MoE, the routing logits on a batch of frames;
  - gradient: the official `train` (targets, TD loss, importance weights, gradient), run with
    optax.sgd(1), hands back params - grad; every parameter's gradient against ours (the agent
    file's targets, loss and backward), as a relative error;
  - training: T updates of `train` with the agent's Adam (`dqn_agent.create_optimizer`) against
    T of ours (torch.optim.Adam, the agent's lr and eps) on the same batches. Reported: the
    distance between the two networks relative to how far they moved from their common start,
    the losses, and for the Soft MoE where each network's routing went.

The agents and the official code they are held against (`dopamine/labs/moes` at 0a5b581):
  - `--agent drq`, DrQ(eps): `rainbow_100k_moe_agent.train` on `FullRainbowMoENetwork` (one atom,
    Huber loss, double DQN, the target the online network, uniform replay);
  - `--agent der`, DER: the same `train` with C51 (51 atoms, v_max 10), double DQN, a target
    network fixed over the T updates as at the start of a run, and importance weights;
  - `--agent rainbow`: `full_rainbow_moe_agent.train` on `FullRainbowMoENetwork` (C51, n = 3);
  - `--agent dqn`: `dqn_moe_agent.train` on `NatureDQNMoE` or `ImpalaMoE` (MSE, no double DQN).
DER and Rainbow run with the noisy layers off, since two frameworks cannot draw the same noise.
`--encoder` (default: the agent's) is the Nature CNN or the Impala ResNet; `--moe soft` (PerConv
tokens), `top1` or `none` (the baseline's Dense(512)); `--num-experts` defaults to the agent's.
Batches are one-step transitions of random play, discounted by the agent's gamma^n as n-step
returns are, without augmentation (a random draw each framework makes its own way). `--float64`
runs both in float64: what is left then is the implementations, not the frameworks' float32
rounding, which training otherwise carries along and amplifies.

Needs JAX, flax, optax, chex, gin-config and absl-py (not in requirements.txt) and Dopamine's
sources at commit 0a5b581 with the folders `jax`, `labs`, `replay_memory`, `discrete_domains`,
`metrics` and `utils` of its `dopamine` package (see `official_soft_moe_routing.py`; TensorFlow,
gym and Dopamine's TF agents are stood in for):

    python benchmark/official_equivalence.py --dopamine /path/to/dopamine --agent drq --moe soft \\
        --encoder nature --updates 1000 --float64 --out benchmark/results/official_equivalence_drq_soft_nature_float64.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.machinery
import json
import os
import sys
import time
from unittest import mock

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_soft_moe_routing as probe  # noqa: E402  (the stand-ins for Dopamine's network imports)

ours, torch, drq = probe.ours, probe.torch, probe.drq
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import der_moe_atari100k as der  # noqa: E402
import dqn_moe_atari as dqn  # noqa: E402
import rainbow_moe_atari as rainbow  # noqa: E402

MOE_TYPES = {"soft": "SOFTMOE", "top1": "MOE", "none": "BASELINE"}
AGENTS = {"drq": drq, "der": der, "dqn": dqn, "rainbow": rainbow}


def import_official_agents(dopamine_root: str) -> dict:
    """Dopamine's network module, the MoE agents' modules (for `train`) and DQN's (for
    `create_optimizer`), with TensorFlow, gin's TF bindings, gym and the TF agents stood in."""
    networks = probe.import_official_networks(dopamine_root)
    for name in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v1", "gin.tf", "gym",
                 "dopamine.agents", "dopamine.agents.dqn", "dopamine.agents.dqn.dqn_agent"):
        stand_in = mock.MagicMock(name=name)
        stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch.compile's import checks read it
        sys.modules.setdefault(name, stand_in)
    from dopamine.jax.agents.dqn import dqn_agent
    from dopamine.labs.moes.agents import dqn_moe_agent, full_rainbow_moe_agent, rainbow_100k_moe_agent
    return {"networks": networks, "dqn_agent": dqn_agent, "drq": rainbow_100k_moe_agent, "der": rainbow_100k_moe_agent,
            "rainbow": full_rainbow_moe_agent, "dqn": dqn_moe_agent}


def our_args(agent: str, moe: str, encoder, num_experts):
    """The agent's Args with the comparison's settings; the noisy layers off."""
    Args = AGENTS[agent].Args
    settings = {"moe": moe, "encoder": encoder or Args().encoder, "num_experts": num_experts or Args().num_experts}
    if hasattr(Args(), "noisy"):
        settings["noisy"] = False
    return Args(**settings)


def official_network(networks, agent: str, args, num_actions: int, inputs_preprocessed: bool = False):
    """DQN: NatureDQNMoE (`dqn.gin`) or ImpalaMoE (`dqn_impala.gin`); the others FullRainbowMoENetwork."""
    common = dict(num_actions=num_actions, inputs_preprocessed=inputs_preprocessed, num_experts=args.num_experts,
                  moe_type=MOE_TYPES[args.moe], nn_scale=1)
    if agent == "dqn":
        return (networks.NatureDQNMoE if args.encoder == "nature" else networks.ImpalaMoE)(**common)
    return networks.FullRainbowMoENetwork(
        num_atoms=args.num_atoms, noisy=False, dueling=args.dueling, distributional=args.num_atoms > 1,
        encoder_type={"nature": "CNN", "impala": "IMPALA"}[args.encoder], **common)


def flat(tree, prefix="") -> dict:
    """A nested dict of arrays -> {'a/b/c': array}."""
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def official_to_ours_names(agent: str, encoder: str, moe: str) -> dict:
    """Our parameter name -> (the official's flattened name, how to lay its array out as ours).
    flax: conv kernels HWIO, dense kernels (in, out); ours OIHW and (out, in)."""
    conv, dense, same = "conv", "dense", "same"
    names = {}
    if encoder == "nature":  # NatureDQNMoE has its convs inline, FullRainbowMoENetwork in `encoder`
        where = "" if agent == "dqn" else "encoder/"
        for i in range(3):
            names[f"torso.encoder.{i}.weight"] = (f"{where}Conv_{i}/kernel", conv)
            names[f"torso.encoder.{i}.bias"] = (f"{where}Conv_{i}/bias", same)
    else:  # each Stack: Conv_0, then its residual blocks' two convs each
        for s in range(3):
            convs = ["conv", "blocks.0.conv0", "blocks.0.conv1", "blocks.1.conv0", "blocks.1.conv1"]
            for j, ours_conv in enumerate(convs):
                names[f"torso.encoder.{s}.{ours_conv}.weight"] = (f"encoder/_stacks_{s}/Conv_{j}/kernel", conv)
                names[f"torso.encoder.{s}.{ours_conv}.bias"] = (f"encoder/_stacks_{s}/Conv_{j}/bias", same)
    if moe == "soft":
        names["torso.moe.router.phi"] = ("SoftMoE_0/phi_weights", same)
    if moe == "top1":
        names["torso.moe.router.weight"] = ("MoE_0/router/Dense_0/kernel", dense)
    if moe == "none":  # the baseline's Dense(512) is the network's first Dense
        names["torso.moe.dense.weight"], names["torso.moe.dense.bias"] = ("Dense_0/kernel", dense), ("Dense_0/bias", same)
    else:  # flax names the vmapped experts at the top
        names.update({"torso.moe.experts.w1": ("ExpertModel_0/net/kernel", same),
                      "torso.moe.experts.b1": ("ExpertModel_0/net/bias", same),
                      "torso.moe.experts.w2": ("ExpertModel_0/Dense_0/kernel", same),
                      "torso.moe.experts.b2": ("ExpertModel_0/Dense_0/bias", same)})
    head = 1 if moe == "none" else 0
    if agent == "dqn":  # one Dense(num_actions) head
        names["head.weight"], names["head.bias"] = (f"Dense_{head}/kernel", dense), (f"Dense_{head}/bias", same)
        return names
    names["advantage.weight"], names["advantage.bias"] = (f"Dense_{head}/kernel", dense), (f"Dense_{head}/bias", same)
    names["value.weight"], names["value.bias"] = (f"Dense_{head + 1}/kernel", dense), (f"Dense_{head + 1}/bias", same)
    return names


def as_ours(array, layout: str, dtype) -> torch.Tensor:
    t = torch.from_numpy(np.array(array)).to(dtype)
    return {"conv": lambda: t.permute(3, 2, 0, 1), "dense": lambda: t.T, "same": lambda: t}[layout]().contiguous()


def load_official_weights(q_net, official_params: dict, names: dict) -> None:
    """Copies every official weight into `q_net`; fails if either side has one the other lacks
    (the Soft MoE's normalisation scale aside, unused without normalisation)."""
    official = {k: v for k, v in flat(official_params).items() if not k.endswith("/scalar")}
    params = dict(q_net.named_parameters())
    if set(names) != set(params) or {o for o, _ in names.values()} != set(official):
        sys.exit(f"error: the parameter maps differ: ours only {sorted(set(params) - set(names))}, "
                 f"official only {sorted(set(official) - {o for o, _ in names.values()})}")
    with torch.no_grad():
        for name, (official_name, layout) in names.items():
            value = as_ours(official[official_name], layout, params[name].dtype)
            if value.shape != params[name].shape:
                sys.exit(f"error: {name} is {tuple(params[name].shape)}, the official {official_name} {tuple(value.shape)}")
            params[name].copy_(value)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


class Official:
    """Dopamine's network and its agent's `train`, on batches given as torch tensors."""

    def __init__(self, dopamine_root: str, agent: str, args, num_actions: int, obs, seed: int, float64: bool):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self.modules = import_official_agents(dopamine_root)
        self.agent, self.args, self.float64 = agent, args, float64
        self.net = official_network(self.modules["networks"], agent, args, num_actions, inputs_preprocessed=float64)
        self.key = jax.random.PRNGKey(seed)
        self.support = (jnp.linspace(-args.v_max, args.v_max, args.num_atoms) if getattr(args, "num_atoms", 1) > 1
                        else jnp.ones(1))
        params = self.net.init(self.key, self.hwc(obs[:1])[0], **self.call_args())
        self.params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), params) if float64 else params
        self.q_values = jax.jit(lambda prm, obs: jax.vmap(lambda x: self.net.apply(prm, x, **self.call_args()).q_values)(obs))

    def call_args(self) -> dict:
        return {"key": self.key} if self.agent == "dqn" else {"support": self.support, "key": self.key}

    def hwc(self, obs):
        """(B, 4, 84, 84) uint8 -> (B, 84, 84, 4) as Dopamine stacks frames, which its network
        scales (float32 x / 255); in float64, scaled here in float64, as `scaled` does for ours."""
        hwc = obs.permute(0, 2, 3, 1)
        return self.jnp.asarray((hwc.double() / 255.0).numpy() if self.float64 else hwc.numpy())

    def train(self, optimizer, opt_state, target_params, batch: dict):
        """One call of the official agent's update; returns (online params, optimizer state, loss)."""
        a, jnp, train = self.args, self.jnp, self.modules[self.agent].train
        states, next_states = self.hwc(batch["obs"]), self.hwc(batch["next_obs"])
        action, ret, terminal = (jnp.asarray(batch[k].numpy()) for k in ("action", "return", "terminal"))
        head = (self.net, self.params, target_params, optimizer, opt_state, states, action, next_states, ret, terminal)
        if self.agent == "dqn":
            out = train(*head, a.gamma ** a.n_step, self.key, False, False, loss_type=a.loss)
        else:
            flags = (a.gamma ** a.n_step, a.double, a.num_atoms > 1, False, self.key, False)
            out = train(*head, jnp.asarray(batch["weights"].numpy()), self.support, *flags,
                        *((False,) if self.agent == "rainbow" else ()))  # log_network_statistics
        return out["online_params"], out["optimizer_state"], float(out["combined_loss"])

    def routing_logits(self, obs):
        """The Soft MoE's logits X Phi (B, m, E * p) on the encoder's tokens (flax's captured
        intermediates: the encoder's output, or NatureDQNMoE's last conv before its ReLU)."""
        p, jax, jnp = self.params, self.jax, self.jnp

        def tokens(x):
            _, state = self.net.apply(p, x, **self.call_args(), capture_intermediates=True, mutable=["intermediates"])
            found = state["intermediates"]
            t = found["encoder"]["__call__"][0] if "encoder" in found else jax.nn.relu(found["Conv_2"]["__call__"][0])
            return t.reshape(-1, t.shape[-1])

        t = jax.vmap(tokens)(self.hwc(obs))
        logits = jnp.einsum("bmd,dnp->bmnp", t, p["params"]["SoftMoE_0"]["phi_weights"])
        return logits.reshape(t.shape[0], t.shape[1], -1)


def our_routing_logits(q_net, obs) -> torch.Tensor:
    with torch.no_grad():
        tokens = drq.tokenize(q_net.torso.encoder(scaled(obs, q_net)), q_net.torso.tokenizer)
        return q_net.torso.moe.router(tokens)


def scaled(obs: torch.Tensor, q_net) -> torch.Tensor:
    """Frames scaled as our network scales them (float32 x / 255), or in float64 for a float64 network."""
    return obs.double() / 255.0 if next(q_net.parameters()).dtype == torch.float64 else obs.float() / 255.0


def our_network(agent: str, args, num_actions: int, dtype):
    module = AGENTS[agent]
    q_net = (module.QNetwork if agent == "dqn" else module.RainbowNetwork)(args, num_actions).to(dtype)
    if getattr(args, "num_atoms", 1) > 1:  # the atoms in the network's dtype, as the official's jnp.linspace
        q_net.support.copy_(torch.linspace(-args.v_max, args.v_max, args.num_atoms, dtype=dtype))
    return q_net


def our_update(agent: str, args, q_net, target_net, optimizer, batch: dict) -> float:
    """Our agent's update on `batch`: its targets, its loss, backward and `optimizer`."""
    module, dtype = AGENTS[agent], next(q_net.parameters()).dtype
    # the official Rainbow-family target multiplies gamma^n by 1 - terminal in float32
    # (`terminals.astype(jnp.float32)`); DQN's in the terminals' dtype
    gamma_n = torch.tensor(args.gamma ** args.n_step, dtype=torch.float32 if agent != "dqn" else dtype).to(dtype)
    batch = {**batch, "obs": scaled(batch["obs"], q_net), "next_obs": scaled(batch["next_obs"], q_net),
             "discount": gamma_n * (1.0 - batch["terminal"].to(dtype))}
    if agent == "dqn":
        total, _ = module.td_loss(args, module.online_q(args, q_net, batch), batch, module.td_target(target_net, batch))
    else:
        targets = module.rainbow_targets(args, q_net, target_net, batch)
        total, _ = module.rainbow_loss(args, module.online_logits(args, q_net, batch), batch, targets)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return total.item()


def batches(data: dict, count: int, seed: int, prioritized: bool, dtype) -> list[dict]:
    """Random one-step transitions; importance weights as the prioritised replay makes them
    (1 / sqrt(p), over their max) from random priorities, all 1 for uniform replay."""
    gen = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(count):
        idx = torch.randint(len(data["obs"]), (32,), generator=gen)
        weights = torch.ones(32, dtype=dtype)
        if prioritized:
            w = 1.0 / torch.sqrt(torch.rand(32, generator=gen, dtype=torch.float64) + 1e-10)
            weights = (w / w.max()).to(dtype)
        out.append({"obs": data["obs"][idx], "next_obs": data["next_obs"][idx], "action": data["action"][idx],
                    "return": data["reward"][idx].to(dtype), "terminal": data["done"][idx].to(dtype), "weights": weights})
    return out


def entropies(logits) -> dict:
    return probe.entropies(np.asarray(logits, dtype=np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dopamine", required=True, help="folder holding Dopamine's `dopamine` package (commit 0a5b581)")
    parser.add_argument("--agent", choices=sorted(AGENTS), default="drq")
    parser.add_argument("--moe", choices=sorted(MOE_TYPES), default="soft")
    parser.add_argument("--encoder", choices=["nature", "impala"], default=None, help="default: the agent's")
    parser.add_argument("--num-experts", type=int, default=None, help="default: the agent's")
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--frames", type=int, default=2000, help="agent steps of random play")
    parser.add_argument("--updates", type=int, default=1000, help="updates in both")
    parser.add_argument("--float64", action="store_true", help="both in float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file of the measurements")
    opts = parser.parse_args()
    if not os.path.isdir(os.path.join(opts.dopamine, "dopamine", "labs", "moes", "agents")):
        sys.exit(f"error: no dopamine/labs/moes/agents under {opts.dopamine}: pass the folder that holds Dopamine's package")
    if opts.float64:
        import jax
        jax.config.update("jax_enable_x64", True)
    import jax
    import optax
    started = time.time()
    dtype = torch.float64 if opts.float64 else torch.float32
    agent, args = opts.agent, our_args(opts.agent, opts.moe, opts.encoder, opts.num_experts)
    data = ours.random_play(opts.game, opts.frames, opts.seed)
    official = Official(opts.dopamine, agent, args, data["num_actions"], data["obs"], opts.seed, opts.float64)
    q_net = our_network(agent, args, data["num_actions"], dtype)
    names = official_to_ours_names(agent, args.encoder, opts.moe)
    load_official_weights(q_net, official.params["params"], names)
    start_params = {n: p.detach().clone() for n, p in q_net.named_parameters()}
    target_params = official.params  # fixed over the T updates as at a run's start; DrQ(eps): the online network
    target_net = q_net if args.target_update_period == 1 else copy.deepcopy(q_net).requires_grad_(False)
    train_batches = batches(data, opts.updates + 1, opts.seed, getattr(args, "prioritized", False), dtype)
    probe_obs = data["obs"][torch.randperm(len(data["obs"]), generator=torch.Generator().manual_seed(opts.seed))[:64]]

    # forward, and the gradient of one update (official: train with sgd(1) gives params - grad)
    b0 = train_batches[0]
    q_official = np.asarray(official.q_values(official.params, official.hwc(b0["obs"])))
    with torch.no_grad():
        q_ours = q_net(scaled(b0["obs"], q_net))
        q_ours = (q_ours if agent == "dqn" else q_ours[0]).numpy()
    sgd = optax.sgd(1.0)
    stepped, _, loss_official = official.train(sgd, sgd.init(official.params), target_params, b0)
    after = flat(stepped["params"])
    grad_official = {k: np.asarray(v) - np.asarray(after[k]) for k, v in flat(official.params["params"]).items()}
    loss_ours = our_update(agent, args, q_net, target_net, torch.optim.SGD(q_net.parameters(), lr=0.0), b0)
    grad_errors = {n: relative_error(p.grad, as_ours(grad_official[names[n][0]], names[n][1], dtype))
                   for n, p in q_net.named_parameters()}
    start = {"q_relative_error": relative_error(q_ours, q_official), "q_max_abs": float(np.abs(q_official).max()),
             "loss_official": loss_official, "loss_ours": loss_ours,
             "gradient_relative_error_max": max(grad_errors.values()),
             "gradient_relative_error_median": float(np.median(list(grad_errors.values()))),
             "gradient_relative_error_worst": max(grad_errors, key=grad_errors.get), "gradient_relative_error": grad_errors}
    if opts.moe == "soft":
        start["routing_logit_relative_error"] = relative_error(our_routing_logits(q_net, b0["obs"]),
                                                               official.routing_logits(b0["obs"]))
    print(f"{agent}, {opts.moe}-{args.num_experts}, {args.encoder}, {dtype}: Q relative error {start['q_relative_error']:.1e}; "
          f"loss {loss_official:.6g} against {loss_ours:.6g}; gradient relative error: largest "
          f"{start['gradient_relative_error_max']:.1e} ({start['gradient_relative_error_worst']}), median "
          f"{start['gradient_relative_error_median']:.1e}", flush=True)

    # T updates with the agents' Adam
    adam = official.modules["dqn_agent"].create_optimizer("adam", learning_rate=args.learning_rate, eps=args.adam_eps)
    opt_state = adam.init(official.params)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.learning_rate, eps=args.adam_eps)
    rows, clock = [], time.time()
    for step, batch in enumerate(train_batches[1:], start=1):
        official.params, opt_state, loss_official = official.train(
            adam, opt_state, official.params if args.target_update_period == 1 else target_params, batch)
        loss_ours = our_update(agent, args, q_net, target_net, optimizer, batch)
        if step % max(1, opts.updates // 5) and step != opts.updates and step != 1:
            continue
        now = flat(official.params["params"])
        apart = {n: float(torch.linalg.vector_norm(p.detach() - as_ours(now[names[n][0]], names[n][1], dtype)))
                 for n, p in q_net.named_parameters()}
        moved = {n: float(torch.linalg.vector_norm(as_ours(now[names[n][0]], names[n][1], dtype) - start_params[n]))
                 for n in apart}
        relative = {n: apart[n] / max(moved[n], 1e-300) for n in apart}
        row = {"update": step, "loss_official": loss_official, "loss_ours": loss_ours,
               "apart_over_moved_all": float(np.sqrt(sum(v * v for v in apart.values())) /
                                             np.sqrt(sum(v * v for v in moved.values()))),
               "apart_over_moved_max": max(relative.values()), "apart_over_moved_worst": max(relative, key=relative.get),
               "seconds": round(time.time() - clock, 1)}
        if opts.moe == "soft":
            phi_start = start_params["torso.moe.router.phi"]
            row["official"] = {**entropies(official.routing_logits(probe_obs)),
                               "phi_rms_change": ours.rms(as_ours(now["SoftMoE_0/phi_weights"], "same", dtype) - phi_start)}
            row["ours"] = {**entropies(our_routing_logits(q_net, probe_obs)),
                           "phi_rms_change": ours.rms(q_net.torso.moe.router.phi.detach() - phi_start)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"agent": agent, "moe": opts.moe, "num_experts": args.num_experts, "encoder": args.encoder, "game": opts.game, "frames": opts.frames,
              "updates": opts.updates, "float64": opts.float64, "seed": opts.seed,
              "learning_rate": args.learning_rate, "adam_eps": args.adam_eps, "jax": jax.__version__,
              "optax": optax.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "seconds": round(time.time() - started, 1), "start": start, "training": rows}
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
