#!/usr/bin/env bash
# Issue 8's direct test of why DrQ(eps) Soft MoE-4 with the Nature CNN scores 0 on Hero, Jamesbond,
# Kangaroo and KungFuMaster and -21 on Pong at 100k steps, where the Impala encoder learns them
# (RESULTS.md, "The paper's setting for the MoE rows"). soft_moe_routing.py measured the Nature CNN
# encoder's gradient RMS under Soft MoE-4 at 7-8e-5: below Adam's epsilon (1.5e-4, appendix B), so
# Adam's steps there shrink about threefold; with Impala it is above. If that is the cause, a smaller
# epsilon lets the Nature CNN Soft MoE-4 learn these games. The command is the fidelity sweep's
# drq_soft_e4_100k with --adam-eps $ADAM_EPS; the fidelity sweep's runs are the reference.
#   bash benchmark/adam_eps_probe.sh --dry-run
#   SEEDS=1 EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_DIR=benchmark/results \
#     bash benchmark/adam_eps_probe.sh --runs-per-gpu 4 --mps
#   python benchmark/aggregate.py benchmark/results/adam_eps_probe/drq_* \
#     benchmark/results/atari100k_fidelity/drq_{none,soft_e4}_100k__{Hero,Jamesbond,Kangaroo,KungFuMaster,Pong}__*
SWEEP=adam_eps_probe
SEEDS=${SEEDS:-3}
RUNS_PER_GPU=${RUNS_PER_GPU:-4}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-"Hero Jamesbond Kangaroo KungFuMaster Pong"}
ADAM_EPS=${ADAM_EPS:-1e-5}

if [[ ! $ADAM_EPS =~ ^[0-9.]+(e-?[0-9]+)?$ ]]; then
  echo "error: ADAM_EPS takes a positive number such as 1e-5 (got '$ADAM_EPS')" >&2
  exit 2
fi

emit drq_soft_e4_eps${ADAM_EPS}_100k drq_moe_atari100k.py --moe soft --num-experts 4 --total-steps 100000 \
  --adam-eps "$ADAM_EPS" | launch "$@"
