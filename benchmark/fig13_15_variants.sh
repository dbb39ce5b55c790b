#!/usr/bin/env bash
# Figures 13-15 (section 5.3): expert variants of Soft MoE (8 experts) on DQN and Rainbow:
# Regular (the penultimate layer), Big (every expert a whole network) and All (a Soft MoE at every
# layer), each with and without the l2 normalisation of Puigcerver et al. (2023). Big and All
# route the input with PerSamp tokens (section 5.3). 20 games, 5 seeds, 50M frames (the figures'
# axis; appendix A reports after 40M: aggregate with --at-frames 40000000).
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig13_15_variants.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig13_15/dqn_*
SWEEP=fig13_15
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-50000000}
AGENTS=${AGENTS:-"dqn rainbow"}
check_choices AGENTS "dqn rainbow" $AGENTS

commands() {
  local agent variant norm tokens common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  for agent in $AGENTS; do
    for variant in regular big all; do
      tokens=$([ $variant = regular ] && echo conv || echo samp)
      emit ${agent}_soft_e8_$variant ${agent}_moe_atari.py --moe soft --num-experts 8 \
        --moe-variant $variant --tokenizer $tokens $common
      emit ${agent}_soft_e8_${variant}_norm ${agent}_moe_atari.py --moe soft --num-experts 8 \
        --moe-variant $variant --tokenizer $tokens --normalize $common
    done
  done
}
commands | launch "$@"
