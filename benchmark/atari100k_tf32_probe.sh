#!/usr/bin/env bash
# Issue 8's probe of the games where DrQ(eps) differs from the published runs (RESULTS.md, "DrQ(eps)'s
# baseline, 74 runs on 26 games"): does the gap hang on the GPU's TF32 arithmetic? DrQ(eps)'s
# baseline on Asterix and BankHeist (both below the published runs on three seeds), with TF32
# (the agents' default on the GPU) and with --no-tf32 (full float32, as the CPU runs that scored
# higher on Asterix), on seeds the fidelity sweep does not use: 16 runs, one batch on one GPU.
#   bash benchmark/atari100k_tf32_probe.sh --dry-run
#   EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_DIR=benchmark/results \
#     bash benchmark/atari100k_tf32_probe.sh --runs-per-gpu 16 --mps
#   python benchmark/rank_against_published.py benchmark/results/atari100k_tf32_probe/drq_none_100k__* --published "DrQ(eps).json"
#   python benchmark/rank_against_published.py benchmark/results/atari100k_tf32_probe/drq_none_fp32_100k__* --published "DrQ(eps).json"
SWEEP=atari100k_tf32_probe
SEEDS=${SEEDS:-"4 5 6 7"}
RUNS_PER_GPU=${RUNS_PER_GPU:-16}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-"Asterix BankHeist"}

{
  emit drq_none_100k drq_moe_atari100k.py --moe none
  emit drq_none_fp32_100k drq_moe_atari100k.py --moe none --no-tf32
} | launch "$@"
