#!/usr/bin/env bash
# Idempotent set-up of a brand-new Debian 12 machine (run as root, Python 3.11 available).
#   scripts/setup.sh          -> virtual environment .venv with dicomvault installed
#   scripts/setup.sh --test   -> the above + test dependencies + Debian's orthanc, dcmtk, postgresql
#                                and orthanc-postgresql (the reference Orthanc on PostgreSQL)
# Debian's daemons that start on install (Orthanc on 8042/4242, PostgreSQL on 5432) are stopped again: tests
# never use those ports, and the user's `dicomvault serve` wants 8042.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

if [ "$want_test" = 1 ]; then
    debs=(orthanc dcmtk postgresql orthanc-postgresql)
    missing=()
    for d in "${debs[@]}"; do
        dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing+=("$d")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian starts the packaged Orthanc where policy-rc.d allows it: stop it, we start our own.
    if command -v service >/dev/null 2>&1; then service orthanc stop >/dev/null 2>&1 || true; fi
    pkill -x Orthanc >/dev/null 2>&1 || true
    # Debian's postgresql package starts a cluster on 5432 likewise: the tests start their own.
    if command -v service >/dev/null 2>&1; then service postgresql stop >/dev/null 2>&1 || true; fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating virtual environment .venv"
    "$python_bin" -m venv .venv
fi
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$want_test") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    if [ "$want_test" = 1 ]; then
        .venv/bin/python -m pip install -q -e ".[test]"
    else
        .venv/bin/python -m pip install -q -e .
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
