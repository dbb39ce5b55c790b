#!/usr/bin/env bash
# Issue 8's probe of the evaluations that collapse (RESULTS.md, "Adam's epsilon tested directly, and
# an evaluation that collapses"): the Nature CNN DrQ(eps) Soft MoE-4 scored 3,254 on Hero and 445 on
# Kangaroo in training (epsilon 0.01) and 0 on both in its final evaluation (epsilon 0.001). Is the
# greedy policy stuck, or weak? Each network is evaluated again at the training epsilon:
#   savemodel  the fidelity sweep's drq_soft_e4_100k with --save-model (the trained network kept as
#              model.pt, its own final evaluation at epsilon 0.001 with the greedy actions counted
#              in eval_greedy_counts): drq_soft_e4_save_100k
#   evaleps    every finished savemodel run's network evaluated again, --eval-epsilon $EVAL_EPSILON
#              (--eval-model, no training): drq_soft_e4_save_evaleps<EVAL_EPSILON>_100k. Run it after
#              savemodel has finished (it emits commands for the runs it finds).
#   bash benchmark/eval_epsilon_probe.sh --dry-run
#   VARIANTS=savemodel EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_DIR=benchmark/results \
#     bash benchmark/eval_epsilon_probe.sh --runs-per-gpu 6 --mps
#   VARIANTS=evaleps EXTRA="--compile --cudagraphs --no-torch-deterministic" RUNS_DIR=benchmark/results \
#     bash benchmark/eval_epsilon_probe.sh --runs-per-gpu 6 --mps
SWEEP=eval_epsilon_probe
SEEDS=${SEEDS:-"1 2 3"}
RUNS_PER_GPU=${RUNS_PER_GPU:-6}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-"Hero Kangaroo"}
VARIANTS=${VARIANTS:-savemodel}
EVAL_EPSILON=${EVAL_EPSILON:-0.01}

check_choices VARIANTS "savemodel evaleps" $VARIANTS
if [[ ! $EVAL_EPSILON =~ ^(0|1|0?\.[0-9]+)$ ]]; then
  echo "error: EVAL_EPSILON takes a probability such as 0.01 (got '$EVAL_EPSILON')" >&2
  exit 2
fi

# evaleps_commands: the evaluations of the finished savemodel runs of these games and seeds
evaleps_commands() {
  local trained game seed model
  saved_models drq_soft_e4_save_100k | while read -r trained game seed model; do
    echo "python drq_moe_atari100k.py --exp-name drq_soft_e4_save_evaleps${EVAL_EPSILON}_100k --env-id $game --seed $seed --moe soft --num-experts 4 --eval-epsilon $EVAL_EPSILON --eval-model $model $EXTRA"
  done
}
if [[ " $VARIANTS " == *" evaleps "* ]]; then
  evaleps=$(evaleps_commands)
  [[ -n $evaleps ]] || { echo "error: VARIANTS=evaleps found no finished savemodel run of these games and seeds in $RUNS_DIR/$SWEEP: run VARIANTS=savemodel first" >&2; exit 2; }
fi

for variant in $VARIANTS; do
  case $variant in
    savemodel) emit drq_soft_e4_save_100k drq_moe_atari100k.py --moe soft --num-experts 4 --save-model ;;
    evaleps) echo "$evaleps" ;;
  esac
done | launch "$@"
