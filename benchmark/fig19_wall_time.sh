#!/usr/bin/env bash
# Figure 19 (appendix E): IQM against wall time for Rainbow, baseline, Soft MoE and Top1-MoE with
# 8 experts, Impala and Nature CNN encoders; 20 games, 3 seeds, 200M frames. Wall time is only
# comparable between runs on the same kind of GPU with the same number of runs per GPU: keep
# RUNS_PER_GPU and the machine fixed (RUNS_PER_GPU=1 by default), and EXTRA the same for all.
#   SEEDS=1 GAMES=Pong FRAMES=2000000 bash benchmark/fig19_wall_time.sh --dry-run
#   python benchmark/aggregate.py runs/sweeps/fig19/*_impala --x hours
SWEEP=fig19
SEEDS=${SEEDS:-3}
RUNS_PER_GPU=${RUNS_PER_GPU:-1}
source "$(dirname "$0")/sweep_common.sh"
games=${GAMES:-$GAMES_20}
FRAMES=${FRAMES:-200000000}

commands() {
  local encoder common="--total-frames $FRAMES --checkpoint-every $CHECKPOINT_EVERY"
  for encoder in impala nature; do
    emit rainbow_none_$encoder rainbow_moe_atari.py --moe none --encoder $encoder $common
    emit rainbow_soft_e8_$encoder rainbow_moe_atari.py --moe soft --num-experts 8 --encoder $encoder $common
    emit rainbow_top1_e8_$encoder rainbow_moe_atari.py --moe top1 --num-experts 8 --encoder $encoder $common
  done
}
commands | launch "$@"
