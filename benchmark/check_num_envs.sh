#!/usr/bin/env bash
# Issue 7's side-by-side check of --num-envs: the same agent stepping 1 and 16 environments per
# run (same algorithm, same updates per agent step) should learn the same curve in expectation.
# DQN and Rainbow with Soft MoE-8 (Impala), 4 games that learn within 10M frames, 3 seeds.
#   NUM_ENVS="1 16" (the values compared), FRAMES=10000000, GAMES, SEEDS as in sweep_common.sh
#   SHORT=1: the short check of benchmark/RESULTS.md instead: DQN in a data-efficient setting
#     (Nature CNN, Soft MoE-4, 10-step returns, an update every step) for 60k agent steps on
#     Boxing and Breakout, seed 1
#   bash benchmark/check_num_envs.sh --dry-run
#   EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_PER_GPU=4 bash benchmark/check_num_envs.sh
#   python benchmark/aggregate.py runs/sweeps/num_envs/dqn_* --baseline dqn_soft_e8_k1   (and rainbow_*)
SHORT=${SHORT:-0}
if [[ $SHORT == 1 ]]; then SWEEP=num_envs_short; SEEDS=${SEEDS:-1}; else SWEEP=num_envs; fi
SEEDS=${SEEDS:-3}
source "$(dirname "$0")/sweep_common.sh"
NUM_ENVS=${NUM_ENVS:-"1 16"}
if [[ $SHORT == 1 ]]; then
  games=${GAMES:-"Boxing Breakout"}
  FRAMES=${FRAMES:-240000}
else
  games=${GAMES:-"Pong Breakout Boxing Freeway"}
  FRAMES=${FRAMES:-10000000}
fi

commands() {
  local k common="--moe soft --num-experts 8 --total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  local data_efficient="--encoder nature --moe soft --num-experts 4 --n-step 10 --update-period 1
    --target-update-period 2000 --min-replay-history 1600 --epsilon-decay-steps 2000 --learning-rate 1e-4
    --loss huber --buffer-size 100000 --iteration-steps 5000 --log-every 5000 --total-frames $FRAMES"
  for k in $NUM_ENVS; do
    if [[ $SHORT == 1 ]]; then
      emit dqn_de_soft_e4_k$k dqn_moe_atari.py --num-envs $k $data_efficient
    else
      emit dqn_soft_e8_k$k dqn_moe_atari.py --num-envs $k $common
      emit rainbow_soft_e8_k$k rainbow_moe_atari.py --num-envs $k $common
    fi
  done
}
commands | launch "$@"
