#!/usr/bin/env bash
# Figure 5: expert dimension. Rainbow with 1, 2, 4, 8 Soft MoE experts of the full width (512)
# and of width 512 / experts (--expert-hidden-divisor: as many parameters as the baseline), and
# the baseline; 20 games, 5 seeds, 200M frames (section 4).
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig5_expert_dim.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig5 --baseline rainbow_none
SWEEP=fig5
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-200000000}
EXPERTS=${EXPERTS:-"1 2 4 8"}

commands() {
  local e common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  emit rainbow_none rainbow_moe_atari.py --moe none $common
  for e in $EXPERTS; do
    emit rainbow_soft_e$e rainbow_moe_atari.py --moe soft --num-experts $e $common
    emit rainbow_soft_e${e}_div rainbow_moe_atari.py --moe soft --num-experts $e --expert-hidden-divisor $common
  done
}
commands | launch "$@"
