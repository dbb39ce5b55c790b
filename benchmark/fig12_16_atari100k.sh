#!/usr/bin/env bash
# Figures 12 and 16 (section 5.2): DER and DrQ(eps) with the Impala (ResNet) encoder, baseline,
# Top1-MoE and Soft MoE with 8 experts (figure 12) and 4 experts (figure 16), on the 26 games of
# Atari 100k, 5 seeds; each for 100k agent steps (the benchmark: "no real difference") and for
# 50M frames with an evaluation of 100 episodes every 250k steps (the figures).
#   SEEDS=1 GAMES=Pong SCHEDULES=100k bash benchmark/fig12_16_atari100k.sh --dry-run
# Names carry _impala (drq_none_impala_100k, der_soft_e4_impala_50M, ...): the agents' default
# encoder is the Nature CNN, and atari100k_fidelity.sh's drq_none_100k is that network.
#   python benchmark/aggregate.py runs/sweeps/fig12_16/der_*_50M --baseline der_none_impala_50M
SWEEP=fig12_16
RUNS_PER_GPU=${RUNS_PER_GPU:-4}  # four Atari 100k runs saturate one H100 (RESULTS.md)
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_26}
AGENTS=${AGENTS:-"der drq"}
EXPERTS=${EXPERTS:-"8 4"}
SCHEDULES=${SCHEDULES:-"100k 50M"}
FRAMES_100K=${FRAMES_100K:-400000}
FRAMES_50M=${FRAMES_50M:-50000000}

check_choices SCHEDULES "100k 50M" $SCHEDULES
check_choices AGENTS "der drq" $AGENTS

commands() {
  local agent e schedule flags
  for schedule in $SCHEDULES; do
    case $schedule in
      100k) flags="--total-steps $((FRAMES_100K / 4))" ;;
      50M) flags="--total-steps $((FRAMES_50M / 4)) --eval-every 250000 --checkpoint-every $CHECKPOINT_EVERY" ;;
    esac
    for agent in $AGENTS; do
      local script=${agent}_moe_atari100k.py common="--encoder impala $flags"
      emit ${agent}_none_impala_$schedule $script --moe none $common
      for e in $EXPERTS; do
        emit ${agent}_top1_e${e}_impala_$schedule $script --moe top1 --num-experts $e $common
        emit ${agent}_soft_e${e}_impala_$schedule $script --moe soft --num-experts $e $common
      done
    done
  done
}
commands | launch "$@"
