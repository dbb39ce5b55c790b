#!/usr/bin/env bash
# Figure 4: replay ratio 0.25, 0.5, 1 and 2 (gradient updates per agent step) for DQN and Rainbow,
# baseline against Soft MoE with 8 experts; 20 games, 5 seeds, 200M frames (section 4).
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig4_replay_ratio.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig4/dqn_*_rr0.25 ...   (one aggregate per ratio)
SWEEP=fig4
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-200000000}
AGENTS=${AGENTS:-"dqn rainbow"}
check_choices AGENTS "dqn rainbow" $AGENTS
RATIOS=${RATIOS:-"0.25 0.5 1 2"}

commands() {
  local agent rr
  for agent in $AGENTS; do
    for rr in $RATIOS; do
      local common="--replay-ratio $rr --total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
      emit ${agent}_none_rr$rr ${agent}_moe_atari.py --moe none $common
      emit ${agent}_soft_e8_rr$rr ${agent}_moe_atari.py --moe soft --num-experts 8 $common
    done
  done
}
commands | launch "$@"
