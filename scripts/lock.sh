#!/usr/bin/env bash
# Re-make the locks from pyproject.toml + constraints.txt with pip-tools (pip-compile):
#   requirements/planner.lock  inspect / profile / plan (no torch)
#   requirements/dev.lock      everything the tests use ('.[dev]'), torch pinned to the CPU build
# Every package with its version and sha256 hashes; pip installs them with --no-deps --require-hashes (the lock
# is the whole closure, so pip resolves nothing: its hash mode and extras do not mix).
# Usage: scripts/lock.sh [--upgrade]      (--upgrade: move every pin to the newest allowed release)
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${LOCK_VENV:-/tmp/mv4deploy-lock-tools}
[ -x "$tools/bin/pip-compile" ] || { python3 -m venv "$tools" && "$tools/bin/pip" install -q "pip-tools>=7.4"; }
compile() {  # OUT, then pip-compile arguments
    local out=$1; shift
    CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$tools/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-index-url --no-emit-find-links -c constraints.txt -o "$out" "$@" \
        pyproject.toml requirements/build.in
    # '.[dev]' names mv4deploy[quant,...] itself: the project is installed editable, not from the lock
    python3 - "$out" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"# WARNING: pip install will require the following package to be hashed\.\n"
              r"(# Consider using a hashable URL like .*\n)?mv4deploy(\[[^\]]*\])? @ file://\S+\n(    # via .*\n)*", "", text)
open(path, "w").write(text)
PY
    ! grep -q "^mv4deploy" "$out"
}
compile requirements/planner.lock "$@"
compile requirements/dev.lock --extra dev "$@"
