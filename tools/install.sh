#!/bin/bash
# Install everything cachekeeper and its tests need on a Debian host:
# system packages (when missing, and only as root) and a virtualenv in
# .venv holding cachekeeper (editable) with its runtime, test and docs
# requirements. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v prlimit >/dev/null || missing+=(util-linux)
command -v git >/dev/null || missing+=(git)
# The system tests elect a leader through a real redis on 127.0.0.1.
command -v redis-server >/dev/null || missing+=(redis-server)
# libvirt-python (a test requirement) builds against libvirt's headers.
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists libvirt 2>/dev/null || missing+=(libvirt-dev)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: please install as root: ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# doc/requirements.txt and bench/requirements.txt too: tests build the docs
# and the release notes, and run the benchmarks' scripts.
.venv/bin/pip install -q -r requirements.txt -r test-requirements.txt \
    -r doc/requirements.txt -r bench/requirements.txt -e .

# The integration tests run a real glance-api, from a virtualenv of its own:
# glance brings many dependencies that cachekeeper must not depend on.
if [ ! -x .venv-glance/bin/glance-manage ] || [ ! -x .venv-glance/bin/gunicorn ]
then
    [ -x .venv-glance/bin/python ] || python3 -m venv .venv-glance
    .venv-glance/bin/pip install -q --upgrade pip
    .venv-glance/bin/pip install -q glance==33.0.0 gunicorn==27.0.1
fi

# The nova race test (tests/stress/test_nova_race.py) spawns instances
# through nova's real libvirt image backend, from a virtualenv of its own
# for the same reason; libvirt-python is not needed for that.
if ! .venv-nova/bin/python -c 'import nova.virt.libvirt.imagebackend' \
        2>/dev/null
then
    [ -x .venv-nova/bin/python ] || python3 -m venv .venv-nova
    .venv-nova/bin/pip install -q --upgrade pip
    .venv-nova/bin/pip install -q nova==34.0.0
fi
