#!/usr/bin/env bash
# The Python SDK and the web console: installs sdk/python into a virtualenv
# (as a user would, with pip), type-checks it with mypy --strict, then runs
# its pytest suite against live `cairn serve` processes (the workspace's
# debug build unless CAIRN_BIN is set); the console tests drive Debian's
# headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/sdk-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q "./sdk/python[test]"
[ -n "${CAIRN_BIN:-}" ] || cargo build --bin cairn -q
echo "sdk: mypy --strict"
(cd sdk/python && "../../$venv/bin/python" -m mypy src/cairn tests)
echo "sdk: pytest"
(cd sdk/python && "../../$venv/bin/python" -m pytest -q -rs tests)
