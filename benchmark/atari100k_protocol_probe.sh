#!/usr/bin/env bash
# Issue 8's probe of the games where DrQ(eps) differs from the published runs (RESULTS.md, "The
# protocol probe"): Asterix and BankHeist score below the published runs, Assault and CrazyClimber
# above. Each variant is the fidelity sweep's own command with flags added:
#   2021        --shift-per batch --noop-unit frame: the 2021 official code that made the published
#               runs, one random shift for the whole batch (the per-sample crop came in February
#               2022, Dopamine 1bb064b) and no-op starts of single emulator frames (MaxEpisodeEvalRunner)
#   fp32        --no-tf32: full float32 on the GPU, as the CPU runs (issue 7's TF32 check too)
#   shiftbatch  --shift-per batch alone     } which half of the 2021 code
#   noopframe   --noop-unit frame alone     }
#   oldrom      --rom-file $ROM_DIR/<game>.bin: the ROMs atari-py 0.2.6 shipped, on the 10 games
#               whose ROM differs from ale-py's (unless GAMES says otherwise; RESULTS.md "BankHeist:
#               the same emulator, another ROM"); not in the default VARIANTS. The ROMs are not in
#               this repository: `pip download --no-binary :all: --no-deps atari-py==0.2.6`, unpack,
#               ROM_DIR=atari-py-0.2.6/atari_py/atari_roms
#   savemodel   the current protocol and --noop-unit frame, each with --save-model (the trained
#               network kept as model.pt): drq_savestep_100k, drq_saveframe_100k
#   swapeval    every finished savemodel run's network evaluated again under the other no-op unit
#               (--eval-model, no training): drq_savestep_evalframe_100k, drq_saveframe_evalstep_100k.
#               With the training runs' own final evaluations, a 2 x 2 of training and evaluation
#               protocols: does the no-op unit move Asterix through training or evaluation? Run it
#               after savemodel has finished (it emits commands for the runs it finds). One launcher
#               holds a sweep folder: while the savemodel runs' launcher still has others queued,
#               take swapeval's commands with --dry-run and run them with benchmark/launch.py
#               --sweep-dir <a folder of their own> --commands <file> (as on 2026-12-02)
# on seeds 4-7, which the sweep does not use. The sweep's seeds 1-3 are the reference. 2021 and
# fp32 on Asterix and BankHeist ran first (16 runs, committed in results/atari100k_protocol_probe).
#   bash benchmark/atari100k_protocol_probe.sh --dry-run
#   VARIANTS="shiftbatch noopframe" GAMES=Asterix EXTRA="--compile --cudagraphs --no-torch-deterministic" \
#     RUNS_DIR=benchmark/results bash benchmark/atari100k_protocol_probe.sh --runs-per-gpu 16 --mps
#   python benchmark/rank_against_published.py benchmark/results/atari100k_protocol_probe/drq_2021_100k__* \
#     --published "DrQ(eps).json"        # and the other variants' names
SWEEP=atari100k_protocol_probe
SEEDS=${SEEDS:-"4 5 6 7"}
RUNS_PER_GPU=${RUNS_PER_GPU:-16}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-"Asterix BankHeist Assault CrazyClimber"}
VARIANTS=${VARIANTS:-"2021 fp32 shiftbatch noopframe"}

check_choices VARIANTS "2021 fp32 shiftbatch noopframe oldrom savemodel swapeval" $VARIANTS
[[ " $VARIANTS " == *" oldrom "* ]] && check_old_roms ${GAMES:-$OLD_ROM_GAMES}  # every ROM first

# swapeval_commands: the evaluations of the finished savemodel runs of these games and seeds
swapeval_commands() {
  local trained game seed model name unit
  saved_models drq_savestep_100k drq_saveframe_100k | while read -r trained game seed model; do
    if [[ $trained == drq_savestep_100k ]]; then name=drq_savestep_evalframe_100k unit=frame; else name=drq_saveframe_evalstep_100k unit=step; fi
    echo "python drq_moe_atari100k.py --exp-name $name --env-id $game --seed $seed --moe none --noop-unit $unit --eval-model $model $EXTRA"
  done
}
if [[ " $VARIANTS " == *" swapeval "* ]]; then
  swapeval=$(swapeval_commands)
  [[ -n $swapeval ]] || { echo "error: VARIANTS=swapeval found no finished savemodel run of these games and seeds in $RUNS_DIR/$SWEEP: run VARIANTS=savemodel first" >&2; exit 2; }
fi

for variant in $VARIANTS; do
  case $variant in
    2021) emit drq_2021_100k drq_moe_atari100k.py --moe none --shift-per batch --noop-unit frame ;;
    fp32) emit drq_fp32_100k drq_moe_atari100k.py --moe none --no-tf32 ;;
    shiftbatch) emit drq_shiftbatch_100k drq_moe_atari100k.py --moe none --shift-per batch ;;
    noopframe) emit drq_noopframe_100k drq_moe_atari100k.py --moe none --noop-unit frame ;;
    oldrom)
      for game in ${GAMES:-$OLD_ROM_GAMES}; do
        (games=$game; emit drq_oldrom_100k drq_moe_atari100k.py --moe none$(old_rom_flag "$game"))
      done ;;
    savemodel)
      emit drq_savestep_100k drq_moe_atari100k.py --moe none --save-model
      emit drq_saveframe_100k drq_moe_atari100k.py --moe none --noop-unit frame --save-model ;;
    swapeval) echo "$swapeval" ;;
  esac
done | launch "$@"
