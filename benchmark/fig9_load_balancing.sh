#!/usr/bin/env bash
# Figure 9: Top1-MoE with 8 experts, with and without the importance and load losses of Ruiz et
# al. (2021) (weight 1 each), against the baseline; DQN and Rainbow, 20 games, 5 seeds, 200M frames.
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig9_load_balancing.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig9/dqn_* --baseline dqn_none
SWEEP=fig9
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-200000000}
AGENTS=${AGENTS:-"dqn rainbow"}
check_choices AGENTS "dqn rainbow" $AGENTS

commands() {
  local agent common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  for agent in $AGENTS; do
    emit ${agent}_none ${agent}_moe_atari.py --moe none $common
    emit ${agent}_top1_e8 ${agent}_moe_atari.py --moe top1 --num-experts 8 $common
    emit ${agent}_top1_e8_balanced ${agent}_moe_atari.py --moe top1 --num-experts 8 \
      --importance-loss-weight 1.0 --load-loss-weight 1.0 $common
  done
}
commands | launch "$@"
