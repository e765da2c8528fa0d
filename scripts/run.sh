#!/usr/bin/env bash
# The main job. Sets up .venv (idempotent) and runs deeptalk-eval with the documented
# defaults --model deeptalk --tasks all --log-samples --processes <cores, at most 4>, each
# kept unless the arguments name that option (--processes also yields to --shard and
# --device); every other argument is passed on:
#   scripts/run.sh                          = deeptalk-eval --model deeptalk --tasks all --log-samples
#   scripts/run.sh --limit 30               = ... --model deeptalk --tasks all --log-samples --limit 30
#   scripts/run.sh --model cascade --tasks spoken_qa
# Subcommands (list, validate, leaderboard, regress, merge), --rescore, --help and --version
# go through untouched. DEEPTALK_RUN_PRINT=1 prints the final command and exits without
# setting anything up (what the tests read).
set -euo pipefail
cd "$(dirname "$0")/.."

has_arg() {  # has_arg NAME ARGS...: does ARGS hold --NAME or --NAME=...?
  local name=$1 a
  shift
  for a in "$@"; do
    case "$a" in "$name" | "$name"=*) return 0 ;; esac
  done
  return 1
}

# Not an evaluation run: nothing to add.
passthrough=false
case "${1-}" in list | validate | leaderboard | regress | merge) passthrough=true ;; esac
for flag in --rescore --help -h --version; do
  if has_arg "$flag" "$@"; then passthrough=true; fi
done

if [ "$passthrough" = false ]; then
  defaults=()
  if ! has_arg --model "$@" && ! has_arg --model-path "$@"; then
    if [ -d checkpoints/reference ]; then
      defaults+=(--model deeptalk)
    else
      # a checkout without the reference checkpoint (a partial clone) still has a main job: the cascade
      echo "note: no reference checkpoint in checkpoints/reference yet: running the cascade baseline" >&2
      defaults+=(--model cascade)
    fi
  fi
  if ! has_arg --tasks "$@"; then defaults+=(--tasks all); fi
  if ! has_arg --log-samples "$@"; then defaults+=(--log-samples); fi
  # one process per core on a CPU: a spoken answer decodes one small step at a time, so a
  # second process answers more than a second thread does (docs/harness.md "Processes"). nproc
  # counts the cores this job may use (taskset, OMP_NUM_THREADS); at most 4, and one per 6 GB
  # of available memory (each loads its own model: 5.5 GB at peak for deeptalk). Not on a GPU
  # (--device, device= in --model-args) nor under accelerate / torchrun (WORLD_SIZE).
  on_gpu=false
  for a in "$@"; do
    case "$a" in *device=cuda* | *device=mps*) on_gpu=true ;; esac
  done
  if ! has_arg --processes "$@" && ! has_arg --shard "$@" && ! has_arg --device "$@" \
    && [ "$on_gpu" = false ] && [ "${WORLD_SIZE:-1}" -le 1 ]; then
    n=$(nproc 2>/dev/null || echo 1)
    # DEEPTALK_RUN_MEM_KB stands in for MemAvailable (the tests set it: memory changes under them)
    mem_kb=${DEEPTALK_RUN_MEM_KB:-$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null || true)}
    if [ -n "$mem_kb" ] && [ "$n" -gt $((mem_kb / 6291456)) ]; then n=$((mem_kb / 6291456)); fi
    if [ "$n" -gt 4 ]; then n=4; fi
    if [ "$n" -gt 1 ]; then defaults+=(--processes "$n"); fi
  fi
  # the defaults go first (the command reads as documented); an explicit `run` stays in front
  if [ "${1-}" = run ]; then
    shift
    set -- run ${defaults[@]+"${defaults[@]}"} "$@"
  else
    set -- ${defaults[@]+"${defaults[@]}"} "$@"
  fi
fi

if [ "${DEEPTALK_RUN_PRINT:-}" = 1 ]; then
  printf 'deeptalk-eval'
  printf ' %q' "$@"
  printf '\n'
  exit 0
fi

bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/deeptalk-eval "$@"
