#!/usr/bin/env bash
# Figure 8. Left: Rainbow (Impala, 8 experts), baseline and Soft MoE on all 60 games. Right: on the
# 20-game subset, Soft MoE with a random Phi drawn at every forward pass (--random-phi) against the
# same baseline and Soft MoE runs (the 20 games are among the 60: no run is repeated).
# 5 seeds, 200M frames.
#   SEEDS=1 GAMES="Pong Breakout" FRAMES=2000000 bash benchmark/fig8_all_games_random_phi.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig8/rainbow_none__* runs/sweeps/fig8/rainbow_soft_e8__* --baseline rainbow_none
#   python benchmark/aggregate.py runs/sweeps/fig8 --baseline rainbow_none \
#     --games "$(source benchmark/sweep_common.sh; echo $GAMES_20)"                       (right panel)
SWEEP=fig8
source "$(dirname "$0")/sweep_common.sh"
FRAMES=${FRAMES:-200000000}

commands() {
  local common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  games=${GAMES:-$GAMES_60}
  emit rainbow_none rainbow_moe_atari.py --moe none $common
  emit rainbow_soft_e8 rainbow_moe_atari.py --moe soft --num-experts 8 $common
  games=${GAMES:-$GAMES_20}
  emit rainbow_soft_e8_randphi rainbow_moe_atari.py --moe soft --num-experts 8 --random-phi $common
}
commands | launch "$@"
