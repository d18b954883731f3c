#!/usr/bin/env bash
# ci/install-deps.sh - everything pinstack needs to build and test, on a
# fresh Debian 12 machine: the C toolchain and libraries, the reference
# servers the tests compare against, and the Python test tools.
#
# Idempotent: apt runs only when a package is missing. Uses sudo unless
# already root. No service is left running: memcached and nutcracker are
# only run by the tests, on ports of their own.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

APT_PACKAGES=(
    build-essential     # gcc, make, libc headers
    pkg-config
    liburing-dev        # io_uring (flash tier)
    libssl-dev          # TLS
    liblz4-dev          # LZ4: the search leaf's stored fields
    zlib1g-dev          # zlib: CRC-32 of the leaf's segment files
    memcached           # the reference server for differential tests
    libmemcached-tools  # memcslap, memcstat, ... (load and protocol checks)
    nutcracker          # twemproxy, the proxy tier our fleet runs behind
    netcat-openbsd      # nc, used by the README's tour and by hand
    dict-gcide          # GCIDE dictionary: a real corpus for the leaf benchmarks
    wordnet-base        # WordNet 3.0 synsets: the same (bench/leaf_real_corpus.py)
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: Debian packages already installed: ${APT_PACKAGES[*]}"
else
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep apt from starting the memcached and nutcracker services at all
    # (policy-rc.d exit 101 = "action forbidden"), on machines with or
    # without systemd. Only a policy file we created is removed again.
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    remove_policy() {
        if [ -n "$created_policy" ]; then
            $SUDO rm -f /usr/sbin/policy-rc.d
        fi
    }
    trap remove_policy EXIT
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
    remove_policy
    trap - EXIT
    # Belt and braces, should a service have started anyway. Only the
    # packaged daemons: the Debian service runs memcached as user
    # "memcache", so developers' own memcached processes are left alone.
    $SUDO service memcached stop >/dev/null 2>&1 || true
    $SUDO service nutcracker stop >/dev/null 2>&1 || true
    $SUDO service dictd stop >/dev/null 2>&1 || true  # dict-gcide's dictionary server
    $SUDO pkill -x -u memcache memcached || true
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable memcached nutcracker dictd >/dev/null 2>&1 || true
    fi
fi

echo "install-deps: Python test tools ($("$PYTHON" --version))"
PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PYTHON" -m pip install -q -r ci/requirements-test.txt
