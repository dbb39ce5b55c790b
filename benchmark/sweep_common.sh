# Sourced by every sweep (benchmark/fig*.sh): the paper's game lists (appendix A), the variables
# that scale a sweep down, and the two functions a sweep uses:
#   emit NAME SCRIPT FLAGS...  one command per game of $games and seed, named --exp-name NAME
#   launch "$@"                hands the commands (standard input) to benchmark/launch.py
#
# Variables (environment):
#   SEEDS=5            a count (seeds 1..N), a range ("4-7"; "2-2" is seed 2 alone) or a list ("3 4")
#   GAMES="Pong ..."   replaces the sweep's game list
#   FRAMES=...         frames per run (the sweep's default is the paper's)
#   EXTRA="..."        flags added to every command, e.g. "--compile --cudagraphs --no-torch-deterministic"
#   RUNS_DIR=runs/sweeps   the sweep's folder is $RUNS_DIR/<sweep>
#   CHECKPOINT_EVERY   agent steps between checkpoints of long runs (resume after an interruption)
#   RUNS_PER_GPU=2     runs sharing one GPU (also --runs-per-gpu): two 200M-frame runs on an H100
#                      train at ~500 steps/s each (RESULTS.md); Atari 100k runs saturate it at 4
#   PYTHON=python3     the interpreter that runs the launcher
# Arguments of the sweep go to the launcher: --dry-run, --status, --slurm --partition P --time T, ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GAMES_20="AirRaid Asterix Asteroids Bowling Breakout DemonAttack Freeway Gravitar Jamesbond MontezumaRevenge
MsPacman Pong PrivateEye Qbert Seaquest SpaceInvaders Venture WizardOfWor YarsRevenge Zaxxon"
GAMES_26="Alien Amidar Assault Asterix BankHeist BattleZone Boxing Breakout ChopperCommand CrazyClimber
DemonAttack Freeway Frostbite Gopher Hero Jamesbond Kangaroo Krull KungFuMaster MsPacman Pong PrivateEye Qbert
RoadRunner Seaquest UpNDown"
GAMES_60="$GAMES_26 AirRaid Asteroids Atlantis BeamRider Berzerk Bowling Carnival Centipede DoubleDunk
ElevatorAction Enduro FishingDerby Gravitar IceHockey JourneyEscape MontezumaRevenge NameThisGame Phoenix Pitfall
Pooyan Riverraid Robotank Skiing Solaris SpaceInvaders StarGunner Tennis TimePilot Tutankham Venture VideoPinball
WizardOfWor YarsRevenge Zaxxon"

# The Atari 100k games whose ROM in atari-py 0.2.6 (the ROMs of the published DER and DrQ(eps) runs,
# probably) differs from ale-py's (RESULTS.md, "BankHeist: the same emulator, another ROM")
OLD_ROM_GAMES="Amidar Assault BankHeist BattleZone DemonAttack Gopher Krull KungFuMaster MsPacman RoadRunner"

SEEDS=${SEEDS:-5}
EXTRA=${EXTRA:-}
RUNS_DIR=${RUNS_DIR:-runs/sweeps}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-2500000}
PYTHON=${PYTHON:-python3}
RUNS_PER_GPU=${RUNS_PER_GPU:-2}

# SEEDS, parsed once here, before a sweep emits anything (a bad value would reach the agents as --seed)
if [[ $SEEDS =~ ^0*[1-9][0-9]*$ ]]; then seed_list=$(seq 1 "$((10#$SEEDS))")
elif [[ $SEEDS =~ ^([0-9]+)-([0-9]+)$ ]] && ((10#${BASH_REMATCH[1]} <= 10#${BASH_REMATCH[2]})); then
  seed_list=$(seq "$((10#${BASH_REMATCH[1]}))" "$((10#${BASH_REMATCH[2]}))")
elif [[ ! $SEEDS =~ ^[0-9]+$ && $SEEDS =~ ^[[:space:]]*[0-9]+([[:space:]]+[0-9]+)*[[:space:]]*$ ]]; then seed_list=$SEEDS
else
  echo "error: SEEDS takes a count (5: seeds 1-5), a range (4-7; 2-2 for seed 2 alone) or a list (\"3 4\"); got '$SEEDS'" >&2
  exit 2
fi
seeds() { printf '%s\n' $seed_list; }

snake() { echo "$1" | sed -E 's/([a-z])([A-Z])/\1_\2/g' | tr '[:upper:]' '[:lower:]'; }  # BankHeist -> bank_heist

# saved_models EXP_NAME...: "<exp-name> <game> <seed> <full path of model.pt>", one line per finished
# run of these experiments in the sweep's folder that kept its network (--save-model), for the games
# ($games) and seeds the sweep asks for
saved_models() {
  local name model run game seed
  for name in "$@"; do
    for model in $(ls "$RUNS_DIR/$SWEEP/${name}__"*/*/model.pt 2>/dev/null); do
      run=$(basename "$(dirname "$(dirname "$model")")")  # <exp-name>__<game>__s<seed>__<hash>
      IFS=' ' read -r game seed <<< "$(echo "${run#"${name}__"}" | sed -E 's/^(.*)__s([^_]*)__[^_]*$/\1 \2/')"
      [[ " $games " == *" $game "* && " $(seeds | tr '\n' ' ') " == *" $seed "* ]] && echo "$name $game $seed $(realpath "$model")"
    done
  done
  return 0
}

# old_rom_flag GAME: "--rom-file <full path>" for a game of OLD_ROM_GAMES when ROM_DIR is set, else nothing
old_rom_flag() {
  [[ -n ${ROM_DIR:-} && " $OLD_ROM_GAMES " == *" $1 "* ]] && echo " --rom-file $(realpath "$ROM_DIR/$(snake "$1").bin")"
  return 0
}

# check_old_roms GAME...: fail unless ROM_DIR holds the ROM of each game of OLD_ROM_GAMES among them
check_old_roms() {
  local game
  for game in "$@"; do
    if [[ " $OLD_ROM_GAMES " == *" $game "* && ! -f "${ROM_DIR:-}/$(snake "$game").bin" ]]; then
      echo "error: ROM_DIR must be atari-py 0.2.6's atari_roms folder, holding $(snake "$game").bin (got '${ROM_DIR:-}')" >&2
      exit 2
    fi
  done
}

# check_choices VARIABLE "ALLOWED..." VALUES...: fail unless every value is allowed. Sweeps call it
# before emitting anything: the launcher reads the commands as they come, so an error midway would
# leave it a partial sweep to run.
check_choices() {
  local variable=$1 value
  local -a allowed=($2)
  shift 2
  for value in "$@"; do
    if [[ " ${allowed[*]} " != *" $value "* ]]; then
      local listed="${allowed[*]:0:${#allowed[@]}-1}"
      echo "error: $variable takes ${listed// /, }${listed:+ and }${allowed[-1]} (got $value)" >&2
      exit 2
    fi
  done
}

emit() {
  local name=$1 script=$2 game seed
  shift 2
  for game in $games; do
    for seed in $(seeds); do
      echo "python $script --exp-name $name --env-id $game --seed $seed $* $EXTRA"
    done
  done
}

launch() {
  "$PYTHON" benchmark/launch.py --sweep-dir "$RUNS_DIR/$SWEEP" --commands - --runs-per-gpu "$RUNS_PER_GPU" "$@"
}
