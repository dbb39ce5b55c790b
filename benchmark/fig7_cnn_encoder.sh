#!/usr/bin/env bash
# Figure 7: the Nature CNN encoder (Mnih et al. 2015) instead of Impala. DQN and Rainbow,
# baseline, Top1-MoE and Soft MoE with 8 experts; 20 games, 5 seeds, 200M frames.
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig7_cnn_encoder.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig7/dqn_* --baseline dqn_none_cnn
SWEEP=fig7
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-200000000}
AGENTS=${AGENTS:-"dqn rainbow"}
check_choices AGENTS "dqn rainbow" $AGENTS

commands() {
  local agent common="--encoder nature --total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  for agent in $AGENTS; do
    emit ${agent}_none_cnn ${agent}_moe_atari.py --moe none $common
    emit ${agent}_top1_e8_cnn ${agent}_moe_atari.py --moe top1 --num-experts 8 $common
    emit ${agent}_soft_e8_cnn ${agent}_moe_atari.py --moe soft --num-experts 8 $common
  done
}
commands | launch "$@"
