"""The lock: README's two commands install it, .ci/run is the second command exactly, and it pins the stack."""

from __future__ import annotations

import re

from conftest import REPO

README = (REPO / "README.md").read_text()
COMMANDS = re.findall(r"^python3 -m venv .*$", README, re.MULTILINE)


def _pins(lock: str) -> dict[str, str]:
    text = (REPO / "requirements" / lock).read_text()
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.MULTILINE)}


def test_readme_commands_install_the_locks_and_ci_runs_the_second():
    planner, tests = COMMANDS
    assert "--no-deps --require-hashes -r requirements/planner.lock" in planner and planner.endswith("mv4deploy plan --profile rtx5090")
    assert "--no-deps --require-hashes -r requirements/dev.lock" in tests and tests.endswith("python -m pytest -q")
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()


def test_every_locked_package_is_pinned_with_hashes():
    for lock in ("planner.lock", "dev.lock"):
        text = (REPO / "requirements" / lock).read_text()
        blocks = re.findall(r"^[A-Za-z0-9_.-]+==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+", text, re.MULTILINE)
        assert len(blocks) == len(_pins(lock)) > 10, lock
        assert not re.search(r"^mv4deploy", text, re.MULTILINE)          # installed editable, not from the lock


def test_the_dev_lock_pins_cpu_torch_and_the_planner_lock_has_no_torch():
    dev, planner = _pins("dev.lock"), _pins("planner.lock")
    assert dev["torch"] == "2.13.0+cpu" and "transformers" in dev and "hatchling" in dev
    assert "torch" not in planner and {"typer", "rich", "pyyaml", "psutil", "hatchling"} <= set(planner)
    assert all(dev.get(name) == version for name, version in planner.items())   # one version of each package
