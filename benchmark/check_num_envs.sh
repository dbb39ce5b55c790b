#!/usr/bin/env bash
# Issue 7's side-by-side check of --num-envs: the same agent stepping 1 and 16 environments per
# run (same algorithm, same updates per agent step) should learn the same curve in expectation.
# DQN and Rainbow with Soft MoE-8 (Impala), 4 games that learn within 10M frames, 3 seeds.
#   NUM_ENVS="1 16" (the values compared), FRAMES=10000000, GAMES, SEEDS as in sweep_common.sh
#   bash benchmark/check_num_envs.sh --dry-run
#   EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_PER_GPU=4 bash benchmark/check_num_envs.sh
#   python benchmark/aggregate.py runs/sweeps/num_envs/dqn_* --baseline dqn_soft_e8_k1   (and rainbow_*)
SWEEP=num_envs
SEEDS=${SEEDS:-3}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-"Pong Breakout Boxing Freeway"}
FRAMES=${FRAMES:-10000000}
NUM_ENVS=${NUM_ENVS:-"1 16"}

commands() {
  local k common="--moe soft --num-experts 8 --total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  for k in $NUM_ENVS; do
    emit dqn_soft_e8_k$k dqn_moe_atari.py --num-envs $k $common
    emit rainbow_soft_e8_k$k rainbow_moe_atari.py --num-envs $k $common
  done
}
commands | launch "$@"
