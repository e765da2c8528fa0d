#!/usr/bin/env bash
# The test suite. Sets up .venv (idempotent) and runs pytest.
#   scripts/test.sh            default suite (fast; what CI runs)
#   scripts/test.sh --slow     also the slow checks (real-model end-to-end runs)
#   scripts/test.sh -k NAME    any other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
args=()
marker="not slow"
for a in "$@"; do
  if [ "$a" = "--slow" ]; then marker=""; else args+=("$a"); fi
done
if [ -n "$marker" ]; then
  exec .venv/bin/python -m pytest -m "$marker" "${args[@]}"
else
  exec .venv/bin/python -m pytest -m "slow or not slow" "${args[@]}"
fi
