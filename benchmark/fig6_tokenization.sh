#!/usr/bin/env bash
# Figures 3 and 6: tokenisation. Rainbow with 8 experts, Soft MoE and Top1-MoE, each with PerConv
# (h*w tokens of d channels), PerFeat (d tokens of h*w) and PerSamp (one token); 20 games,
# 5 seeds, 200M frames.
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig6_tokenization.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig6
SWEEP=fig6
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-200000000}

commands() {
  local moe tok common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  for moe in soft top1; do
    for tok in conv feat samp; do
      emit rainbow_${moe}_e8_$tok rainbow_moe_atari.py --moe $moe --num-experts 8 --tokenizer $tok $common
    done
  done
}
commands | launch "$@"
