#!/usr/bin/env bash
# One command, two trees, side by side on this machine: the same deeptalk-eval arguments run
# by the tree at OLD_TREE (a `git worktree` of the commit before) on one core and by this tree
# on the other, one thread each, each with its own cache holding only the converted weights
# (WEIGHTS_CACHE's whisper/ and base_llm/). Run it twice with SWAP=1 the second time, so each
# side runs once on each core (this machine's two cores are not equally fast). Then compares
# the two results files sample by sample (benchmarks/compare_results.py).
#   OLD_TREE=/path/to/worktree WEIGHTS_CACHE=~/.cache/deeptalk [SWAP=1] \
#     bash benchmarks/side_by_side.sh OUT_DIR --model cascade --tasks ... --limit 96
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "$1"); shift
: "${OLD_TREE:?set OLD_TREE to the other tree}" "${WEIGHTS_CACHE:?set WEIGHTS_CACHE to a cache with converted weights}"
python=${PYTHON:-$here/.venv/bin/python}
old_core=0; new_core=1
if [ "${SWAP:-0}" = 1 ]; then old_core=1; new_core=0; fi
rm -rf "$out"; mkdir -p "$out"
side() {  # side NAME CORE TREE ARGS...
  local name=$1 core=$2 tree=$3; shift 3
  mkdir -p "$out/cache-$name"
  for d in whisper base_llm; do ln -s "$(realpath "$WEIGHTS_CACHE/$d")" "$out/cache-$name/$d"; done
  ( cd "$tree" && DEEPTALK_CACHE=$out/cache-$name OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
      TOKENIZERS_PARALLELISM=false /usr/bin/time -v -o "$out/$name.time.txt" taskset -c "$core" \
      "$python" -m deeptalk_eval "$@" --output-dir "$out/out-$name" --no-progress --log-samples > "$out/$name.log" 2>&1 )
}
side old "$old_core" "$OLD_TREE" "$@" &
side new "$new_core" "$here" "$@" &
wait
old_json=$(ls "$out"/out-old/*/*.json | tail -1); new_json=$(ls "$out"/out-new/*/*.json | tail -1)
"$python" "$here/benchmarks/compare_results.py" "$old_json" "$new_json" --out "$out/compare.json"
