#!/usr/bin/env bash
# Atari 100k against the published agents (issue 8, RESULTS.md "Atari 100k against the published
# DER and DrQ(eps)"): DER and DrQ(eps) with their own network (Nature CNN), as the baselines of
# Agarwal et al. (2021), and the same agents with Soft MoE and Top1-MoE of 4 experts (figure 16's
# count), on the 26 games, 100k agent steps, 100 evaluation episodes at the end.
# Seeds go outermost, then agent, then network: a sweep stopped early holds whole seeds of the first
# configurations (DrQ(eps)'s baseline first).
#   SEEDS=3 bash benchmark/atari100k_fidelity.sh --dry-run
#   EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_DIR=benchmark/results \
#     bash benchmark/atari100k_fidelity.sh --runs-per-gpu 12 --mps     # continues the committed sweep
#   python benchmark/aggregate.py benchmark/results/atari100k_fidelity --baseline drq_none_100k
# PROTOCOL=2021 runs the same configurations in the 2021 official code's protocol, which made the
# published runs (RESULTS.md, "The protocol probe"): --noop-unit frame, and for DrQ(eps)
# --shift-per batch (DER has no augmentation), named with _2021 (drq_2021_100k,
# drq_soft_e4_2021_100k, ...). The default, current, is the code the MoE paper ran.
# ROM_DIR=<atari-py 0.2.6's atari_roms folder> plays the 10 games whose ROM atari-py 0.2.6 shipped
# differs from ale-py's (OLD_ROM_GAMES, sweep_common.sh) from those ROMs (--rom-file), as the
# published runs probably did (RESULTS.md, "The old ROMs"), and adds _oldrom to every name
# (drq_2021_oldrom_100k: the published agent's setting, as far as it is known). The ROMs are not in
# this repository: `pip download --no-binary :all: --no-deps atari-py==0.2.6` and unpack it.
# LIFE_LOSS=cut or cut_2021 adds --life-loss-frame-skip (Dopamine's frame skip, which stops at the
# frame that loses a life: since April 2022, and in the 2021 code; RESULTS.md, "The frame skip at a
# lost life") and _cut or _cut2021 to every name (drq_2021_cut2021_oldrom_100k). The default, full,
# plays four frames at every step, as every run before 2026-12-03 did.
SWEEP=atari100k_fidelity
SEEDS=${SEEDS:-3}
RUNS_PER_GPU=${RUNS_PER_GPU:-12}  # with --mps: twelve runs share an H100 (RESULTS.md)
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_26}
AGENTS=${AGENTS:-"drq der"}
NETWORKS=${NETWORKS:-"none soft top1"}
EXPERTS=${EXPERTS:-4}
PROTOCOL=${PROTOCOL:-current}
LIFE_LOSS=${LIFE_LOSS:-full}
check_choices AGENTS "drq der" $AGENTS
check_choices NETWORKS "none soft top1" $NETWORKS
check_choices PROTOCOL "current 2021" $PROTOCOL
check_choices LIFE_LOSS "full cut cut_2021" $LIFE_LOSS
protocol_name=""
[[ $PROTOCOL == 2021 ]] && protocol_name="_2021"
life_loss_name="" life_loss_flag=""
if [[ $LIFE_LOSS != full ]]; then
  life_loss_name=_${LIFE_LOSS/_/} life_loss_flag=" --life-loss-frame-skip $LIFE_LOSS"
fi
rom_name=""
if [[ -n ${ROM_DIR:-} ]]; then
  check_old_roms $games  # every ROM first: nothing is emitted if one is missing
  rom_name=_oldrom
fi

commands() {
  local seed agent net name moe_flags protocol_flags game
  for seed in $(seeds); do
    for agent in $AGENTS; do
      protocol_flags=""
      if [[ $PROTOCOL == 2021 ]]; then
        protocol_flags=" --noop-unit frame"
        [[ $agent == drq ]] && protocol_flags=" --shift-per batch$protocol_flags"
      fi
      for net in $NETWORKS; do
        case $net in
          none) name=${agent}${protocol_name:-_none}${life_loss_name}${rom_name}_100k moe_flags="--moe none" ;;
          soft | top1) name=${agent}_${net}_e${EXPERTS}${protocol_name}${life_loss_name}${rom_name}_100k moe_flags="--moe $net --num-experts $EXPERTS" ;;
        esac
        for game in $games; do
          echo "python ${agent}_moe_atari100k.py --exp-name $name --env-id $game --seed $seed $moe_flags$protocol_flags$life_loss_flag$(old_rom_flag "$game") $EXTRA"
        done
      done
    done
  done
}
commands | launch "$@"
