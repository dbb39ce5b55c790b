#!/usr/bin/env bash
# Figure 18 (appendix D): Impala convolutions of 4x4 and 6x6 instead of 3x3, baseline against
# Soft MoE with 8 experts. The appendix does not name the agent; this sweep uses Rainbow (the
# agent of the paper's other ablations; AGENTS="dqn" for DQN). 20 games, 5 seeds, 50M frames
# (the figure's axis).
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig18_filter_sizes.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig18/*_f4 --baseline rainbow_none_f4
SWEEP=fig18
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-50000000}
AGENTS=${AGENTS:-rainbow}
FILTERS=${FILTERS:-"4 6"}

commands() {
  local agent f common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  for agent in $AGENTS; do
    for f in $FILTERS; do
      emit ${agent}_none_f$f ${agent}_moe_atari.py --moe none --filter-size $f $common
      emit ${agent}_soft_e8_f$f ${agent}_moe_atari.py --moe soft --num-experts 8 --filter-size $f $common
    done
  done
}
commands | launch "$@"
