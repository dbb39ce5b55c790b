#!/usr/bin/env bash
# Figure 1: parameter scaling. DQN and Rainbow (Impala encoder) with 1, 2, 4 and 8 experts of
# Soft MoE and Top1-MoE, against the baseline whose penultimate layer is widened by the same
# factor (--scale-hidden); 20 games, 5 seeds, 200M frames, replay ratio 0.25.
#   bash benchmark/fig1_expert_scaling.sh                      # every run, on this machine's GPUs
#   SEEDS=1 GAMES="Pong Breakout" FRAMES=2000000 bash benchmark/fig1_expert_scaling.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig1/dqn_* --baseline dqn_none_x1
#   python benchmark/aggregate.py runs/sweeps/fig1/rainbow_* --baseline rainbow_none_x1
SWEEP=fig1
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-200000000}
AGENTS=${AGENTS:-"dqn rainbow"}
check_choices AGENTS "dqn rainbow" $AGENTS
EXPERTS=${EXPERTS:-"1 2 4 8"}

commands() {
  local agent e
  for agent in $AGENTS; do
    local common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
    for e in $EXPERTS; do
      if [ "$e" = 1 ]; then
        emit ${agent}_none_x1 ${agent}_moe_atari.py --moe none $common
      else
        emit ${agent}_none_x$e ${agent}_moe_atari.py --moe none --scale-hidden --num-experts $e $common
      fi
      emit ${agent}_soft_e$e ${agent}_moe_atari.py --moe soft --num-experts $e $common
      emit ${agent}_top1_e$e ${agent}_moe_atari.py --moe top1 --num-experts $e $common
    done
  done
}
commands | launch "$@"
