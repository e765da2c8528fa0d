#!/usr/bin/env bash
# Creates/updates the project-local virtual environment .venv and installs everything the
# harness, the reference model and the tests need. Idempotent: when nothing changed since
# the last successful run (same requirement files, same pyproject), it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DEEPTALK_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Debian packages used by the bundled data and checks: real recordings (alsa-utils), factoid
# QA (bsdgames), WordNet glosses and fortunes (the hearing corpus), extra TTS voices (flite; Festival's female voices, which train the codec's
# mel refiner), headless Chromium for the HTML leaderboard test.
need_apt=()
[ -d /usr/share/sounds/alsa ] || need_apt+=(alsa-utils)
[ -d /usr/share/games/bsdgames/quiz ] || need_apt+=(bsdgames)
command -v flite >/dev/null 2>&1 || need_apt+=(flite)
command -v text2wave >/dev/null 2>&1 || need_apt+=(festival)
[ -d /usr/share/festival/voices/catalan/upc_ca_ona_hts ] || need_apt+=(festvox-ca-ona-hts)
[ -d /usr/share/festival/voices/czech/czech_dita ] || need_apt+=(festvox-czech-dita)
[ -d /usr/share/festival/voices/finnish/suo_fi_lj_diphone ] || need_apt+=(festvox-suopuhe-lj)
[ -d /usr/share/festival/voices/italian/lp_diphone ] || need_apt+=(festvox-italp16k)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# broad English text for the hearing corpus (deeptalk/hearing_corpus.py)
[ -f /usr/share/wordnet/data.noun ] || need_apt+=(wordnet-base)
[ -f /usr/share/games/fortunes/fortunes ] || need_apt+=(fortunes)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >/dev/null \
      || echo "warning: could not install Debian packages ${need_apt[*]}; the checks that use them will say so" >&2
  else
    echo "warning: Debian packages ${need_apt[*]} are missing (install them as root)" >&2
  fi
fi

stamp_of() { cat requirements.txt requirements-nodeps.txt pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16; }
STAMP="$VENV/.deeptalk-installed-$(stamp_of)"
[ -f "$STAMP" ] && exit 0

echo "setting up $VENV (first run only)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's index settings on some machines point at local mirrors and warn per package: quiet them.
pip_install() {
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# torch first: any other order lets a dependency pull a multi-GB CUDA build.
pip_install torch==2.13.0
pip_install -r requirements.txt
pip_install --no-deps -r requirements-nodeps.txt
pip_install --no-deps -e .
rm -f "$VENV"/.deeptalk-installed-*
touch "$STAMP"
