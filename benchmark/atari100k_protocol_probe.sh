#!/usr/bin/env bash
# Issue 8's probe of the games where DrQ(eps) differs from the published runs (RESULTS.md, "DrQ(eps)'s
# baseline, 74 runs on 26 games"): Asterix and BankHeist, below the published runs on all three
# seeds. Two candidate causes, each the fidelity sweep's own command with flags added:
#   --shift-per batch --noop-unit frame   the 2021 official code that made the published runs: one
#       random shift for the whole batch (the per-sample crop came in February 2022, Dopamine
#       1bb064b) and no-op starts of single emulator frames (MaxEpisodeEvalRunner)
#   --no-tf32   full float32 on the GPU, as the CPU runs (one of which scored higher on Asterix)
# on seeds 4-7, which the sweep does not use: 16 runs, one batch on one GPU. The sweep's seeds 1-3
# are the reference.
#   bash benchmark/atari100k_protocol_probe.sh --dry-run
#   EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_DIR=benchmark/results \
#     bash benchmark/atari100k_protocol_probe.sh --runs-per-gpu 16 --mps
#   python benchmark/rank_against_published.py benchmark/results/atari100k_protocol_probe/drq_2021_100k__* \
#     --published "DrQ(eps).json"        # and drq_fp32_100k__*
SWEEP=atari100k_protocol_probe
SEEDS=${SEEDS:-"4 5 6 7"}
RUNS_PER_GPU=${RUNS_PER_GPU:-16}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-"Asterix BankHeist"}

{
  emit drq_2021_100k drq_moe_atari100k.py --moe none --shift-per batch --noop-unit frame
  emit drq_fp32_100k drq_moe_atari100k.py --moe none --no-tf32
} | launch "$@"
