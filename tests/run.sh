#!/usr/bin/env bash
# The test suite as README.md gives it and .ci/run calls it: first what the tests need beyond the project's
# Python packages (Debian's chromium, which the report check drives headless; playwright never downloads a
# browser), then pytest in the .venv that README's first command made. Arguments go to pytest. The tests fetch
# from Maven Central what they run on Java (the S3-compatible server s3proxy, into ~/.cache/tfbridge-tests;
# Spark's s3a connector, through Spark's own resolver into ~/.ivy2*).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "tests/run.sh: no .venv here: run README's first command first" >&2
    exit 2
fi
if ! command -v chromium >/dev/null; then
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    echo "tests/run.sh: installing chromium with apt (the report check drives it)" >&2
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
