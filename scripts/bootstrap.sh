#!/usr/bin/env bash
# Creates/updates the project-local virtual environment .venv and installs everything the
# harness, the reference model and the tests need. Idempotent: when nothing changed since
# the last successful run (same requirement files, same pyproject), it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DEEPTALK_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

stamp_of() { cat requirements.txt requirements-nodeps.txt pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16; }
STAMP="$VENV/.deeptalk-installed-$(stamp_of)"
if [ -f "$STAMP" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first: any other order lets a dependency pull a multi-GB CUDA build.
$PIP install torch==2.13.0
$PIP install -r requirements.txt
$PIP install --no-deps -r requirements-nodeps.txt
$PIP install --no-deps -e .

# Debian packages used by the bundled data (real recordings, factoid QA, extra TTS voices).
need_apt=()
[ -d /usr/share/sounds/alsa ] || need_apt+=(alsa-utils)
[ -d /usr/share/games/bsdgames/quiz ] || need_apt+=(bsdgames)
command -v flite >/dev/null 2>&1 || need_apt+=(flite)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >/dev/null \
      || echo "warning: could not install Debian packages ${need_apt[*]}; tasks using them will report it" >&2
  else
    echo "warning: Debian packages ${need_apt[*]} are missing (install them as root)" >&2
  fi
fi
rm -f "$VENV"/.deeptalk-installed-*
touch "$STAMP"
