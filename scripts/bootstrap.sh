#!/usr/bin/env bash
# Idempotent set-up for `make test`, `make demo`, `make bench`, `make lint`:
#   1. installs the Debian packages onecard's tests and demo need (only the missing ones),
#   2. creates .venv from requirements.lock (hash-checked), and installs onecard into it.
# A second run with nothing to do takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages, by purpose:
#   mosquitto, mosquitto-clients   the MQTT broker tests start privately, and its CLI
#   socat                          serial-line (pty pair) plumbing for terminal tests
#   pcscd, vsmartcard-vpcd         PC/SC daemon and the virtual reader our virtual card plugs into
#   libpcsclite-dev, swig, gcc     to build pyscard (it ships no Linux wheels)
#   chromium                       the browser the dashboard's Playwright tests drive (headless)
#   fonts-wqy-microhei             a CJK font, so screenshots of the Chinese pages show Chinese
#   postgresql                     initdb/postgres/psql for the private cluster central's tests start
#   python3-venv, python3-dev      virtualenv and headers, when python3 is Debian's own
APT_PACKAGES=(mosquitto mosquitto-clients socat pcscd vsmartcard-vpcd libpcsclite-dev swig gcc chromium fonts-wqy-microhei postgresql)
PYTHON=${PYTHON:-python3}
if [[ "$(command -v "$PYTHON")" == /usr/bin/* ]]; then
    APT_PACKAGES+=(python3-venv python3-dev)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Package scripts must not start system daemons we then fight with for ports; tests run
    # their own private instances. policy-rc.d exit 101 = "action forbidden".
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The virtualenv, rebuilt whenever requirements.lock or pyproject.toml changes.
stamp=.venv/.onecard-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    echo "bootstrap: creating .venv from requirements.lock"
    rm -rf .venv
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=23.2" 2>/dev/null || true
    .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
        -r requirements.lock
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
        -e .
    echo "$want" >"$stamp"
fi
