#!/usr/bin/env bash
# Issue 8's longer runs: DQN and Rainbow, baseline and Soft MoE-8 (Impala), against the training
# curves Dopamine publishes for the same agents (baselines/atari/data/<game>_Impala.json: 5 seeds,
# 200 iterations of 1M frames, sticky actions, the protocol our agents follow). Dopamine's DQN is
# dqn_moe_atari.py's (Adam, MSE); its Rainbow is C51 with prioritised replay and 3-step returns,
# without noisy nets, dueling or double DQN: rainbow_moe_atari.py --no-noisy --no-dueling --no-double.
# A handful of games, for as many frames as the device allows.
#   FRAMES=10000000 (the default: 10 iterations), GAMES, SEEDS (default 2) as in sweep_common.sh
#   NUM_ENVS=1 (the protocol; 16 steps 16 environments per run, same updates per agent step: issue 7)
#   AGENTS="dqn rainbow", NETWORKS="none soft" select configurations
#   PRECISION=fp32 computes in full float32 (--no-tf32; names get _fp32): issue 7's check that TF32
#     leaves the curves the same within noise (default tf32: the agents' default)
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

AGENTS=${AGENTS:-"dqn rainbow"}
NETWORKS=${NETWORKS:-"none soft"}
PRECISION=${PRECISION:-tf32}
check_choices AGENTS "dqn rainbow" $AGENTS
check_choices NETWORKS "none soft" $NETWORKS
check_choices PRECISION "tf32 fp32" $PRECISION
precision_name="" precision_flag=""
[[ $PRECISION == fp32 ]] && precision_name="_fp32" precision_flag=" --no-tf32"

common="--total-frames $FRAMES --num-envs $NUM_ENVS --checkpoint-every $CHECKPOINT_EVERY$precision_flag"
dopamine_rainbow="--no-noisy --no-dueling --no-double"
commands() {
  local agent net agent_flags moe_flags name
  for agent in $AGENTS; do
    agent_flags=""
    [[ $agent == rainbow ]] && agent_flags=" $dopamine_rainbow"
    for net in $NETWORKS; do
      case $net in
        none) name=${agent}_none moe_flags="--moe none" ;;
        soft) name=${agent}_soft_e8 moe_flags="--moe soft --num-experts 8" ;;
      esac
      emit "$name$precision_name" "${agent}_moe_atari.py" $moe_flags$agent_flags $common
    done
  done
}
commands | launch "$@"
