#!/usr/bin/env bash
# Issue 8's longer runs: DQN and Rainbow, baseline and Soft MoE-8 (Impala), against the training
# curves Dopamine publishes for the same agents (baselines/atari/data/<game>_Impala.json: 5 seeds,
# 200 iterations of 1M frames, sticky actions, the protocol our agents follow). Dopamine's DQN is
# dqn_moe_atari.py's (Adam, MSE); its Rainbow is C51 with prioritised replay and 3-step returns,
# without noisy nets, dueling or double DQN: rainbow_moe_atari.py --no-noisy --no-dueling --no-double.
# A handful of games, for as many frames as the device allows.
#   FRAMES=10000000 (the default: 10 iterations), GAMES, SEEDS (default 2) as in sweep_common.sh
#   NUM_ENVS=1 (the protocol; 16 steps 16 environments per run, same updates per agent step: issue 7)
#   bash benchmark/dopamine_curves.sh --dry-run
#   EXTRA="--compile --cudagraphs --no-torch-deterministic" NUM_ENVS=16 RUNS_PER_GPU=2 bash benchmark/dopamine_curves.sh
#   python benchmark/compare_dopamine.py runs/sweeps/dopamine_curves/dqn_* \
#     --dopamine-data <dopamine clone>/baselines/atari/data --encoder Impala --agents DQN    (rainbow_*: Rainbow)
SWEEP=dopamine_curves
SEEDS=${SEEDS:-2}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-"Pong Breakout Asterix Seaquest"}
FRAMES=${FRAMES:-10000000}
NUM_ENVS=${NUM_ENVS:-1}

common="--total-frames $FRAMES --num-envs $NUM_ENVS --checkpoint-every $CHECKPOINT_EVERY"
dopamine_rainbow="--no-noisy --no-dueling --no-double"
{
  emit dqn_none dqn_moe_atari.py --moe none $common
  emit dqn_soft_e8 dqn_moe_atari.py --moe soft --num-experts 8 $common
  emit rainbow_none rainbow_moe_atari.py --moe none $dopamine_rainbow $common
  emit rainbow_soft_e8 rainbow_moe_atari.py --moe soft --num-experts 8 $dopamine_rainbow $common
} | launch "$@"
