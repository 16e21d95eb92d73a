"""Behaviour snapshot: ``plan --json`` for every preset on every shipped profile and ``inspect --json`` for
every preset, byte for byte as the CLI prints them. Taken before the package was restructured (issue 13)
so that a move that changes an answer fails here; ``pytest tests/test_behaviour_snapshot.py
--update-golden`` rewrites the snapshots after an intended change, and the diff gets reviewed.

The snapshots are gzipped JSON, one object per command keyed by ``preset@profile`` (``preset`` for
inspect); a mismatch names the first differing key path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mv4deploy import cli
from mv4deploy.hardware.profile import list_profiles
from mv4deploy.model.source import list_presets

SNAPSHOTS = Path(__file__).parent / "golden" / "behaviour"


TIMINGS = {"search_s"}    # wall-clock fields: they change from run to run, so they are not behaviour


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _cli_json(capsys, args: list[str]):
    code = cli.run(args)
    out = capsys.readouterr().out
    return code, (_without_timings(json.loads(out)) if out.strip() else None)


def _first_difference(a, b, path="$"):
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}.{key}: present on one side only"
            found = _first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def _check(name: str, current: dict, update: bool) -> None:
    path = SNAPSHOTS / f"{name}.json.gz"
    if update:
        path.write_bytes(gzip.compress(json.dumps(current, sort_keys=True, indent=1).encode(), mtime=0))
    assert path.is_file(), f"{path} missing: run pytest {__file__} --update-golden"
    expected = json.loads(gzip.decompress(path.read_bytes()))
    assert set(current) == set(expected), sorted(set(current) ^ set(expected))
    for key in sorted(expected):
        difference = _first_difference(expected[key], current[key])
        assert difference is None, f"{name} {key}: {difference}"


def test_plan_json_for_every_preset_on_every_profile(capsys, update_golden):
    current = {}
    for preset in list_presets():
        for profile in list_profiles():
            code, data = _cli_json(capsys, ["plan", "--model", preset, "--profile", profile, "--json"])
            current[f"{preset}@{profile}"] = {"exit": code, "json": data}
    _check("plan", current, update_golden)


def test_inspect_json_for_every_preset(capsys, update_golden):
    current = {}
    for preset in list_presets():
        code, data = _cli_json(capsys, ["inspect", preset, "--json"])
        current[preset] = {"exit": code, "json": data}
    _check("inspect", current, update_golden)


@pytest.mark.parametrize("name", ["plan", "inspect"])
def test_snapshots_cover_every_preset(name):
    keys = json.loads(gzip.decompress((SNAPSHOTS / f"{name}.json.gz").read_bytes()))
    assert {k.split("@")[0] for k in keys} == set(list_presets())
