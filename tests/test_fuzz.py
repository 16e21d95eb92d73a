"""A generated corpus of hostile inputs (issue #18): configs, profiles, plan files, gates, safetensors headers
and indexes, CLI numbers and paths. Every case must give exit 2 and one line on stderr naming the file (when
there is one), the field and the value; nothing on stdout; nothing left in OUT; and finish in seconds.

The cases are generated from shipped files by replacing one field at a time with a value of the wrong
kind, so a new field is covered without a new test. They run in-process (``inproc.run_inproc``); a few
also run as real subprocesses at the end.
"""

from __future__ import annotations

import copy
import json
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import PRESETS, REPO, run_cli
from inproc import one_line_error, run_inproc, tree

FIXTURES = REPO / "tests" / "fixtures" / "models"
QWEN = FIXTURES / "tiny-qwen2"
TINY_V4 = FIXTURES / "tiny-v4"
GOLDEN_QWEN = REPO / "tests" / "golden" / "golden-tiny-qwen2.safetensors"
SECONDS = 5.0      # per case, in-process ("under a few seconds")


@dataclass(frozen=True)
class Case:
    id: str
    kind: str                    # which builder below writes the input
    payload: object              # what that builder needs
    words: tuple[str, ...]       # the line must hold each (file, field, value)


def _deep(n: int) -> object:
    value: object = 0
    for _ in range(n):
        value = [value]
    return value


# Wrong kinds of value, each paired with text the error must show (None: only file and field are checked).
WRONG = [("string", "abc", "'abc'"), ("negative", -7, "-7"), ("list", [1, 2], "[1, 2]"),
         ("mapping", {"x": 1}, "{'x': 1}"), ("bool", True, "True"), ("huge", 10**40, "1000000"),
         ("long-text", "z" * 5000, "zzzz"), ("nul", "a\0b", "'a"), ("deep", _deep(60), "[[[")]


# ---- configs: every integer field of two presets --------------------------------------------------------
def _config_cases() -> list[Case]:
    cases = []
    for preset in ("tiny-deepseek-v4", "tiny-qwen2"):
        base = json.loads((PRESETS / f"{preset}.json").read_text())
        ints = [k for k, v in base.items() if isinstance(v, int) and not isinstance(v, bool)
                and k not in ("num_nextn_predict_layers", "n_shared_experts", "num_hash_layers", "rope_theta",
                              "compress_rope_theta", "max_position_embeddings", "hc_sinkhorn_iters", "bos_token_id",
                              "eos_token_id", "max_window_layers", "sliding_window")]
        for key in ints:
            for name, value, shown in WRONG:
                cfg = {**copy.deepcopy(base), key: value}
                cases.append(Case(f"config-{preset}-{key}-{name}", "config", cfg, (key, shown)))
    cases.append(Case("config-deep-json", "config-text", "[" * 50_000 + "]" * 50_000, ("nested too deeply",)))
    cases.append(Case("config-not-utf8", "config-bytes", b"\xff\xfe{", ("cannot read",)))
    return cases


# ---- profiles: every figure of a shipped profile ---------------------------------------------------------
PROFILE = yaml.safe_load((REPO / "profiles" / "rtx5090.yaml").read_text())
PROFILE_WRONG = [("string", "abc", "'abc'"), ("negative", -7, "-7"), ("list", [1, 2], "[1, 2]"),
                 ("mapping", {"x": 1}, "{'x': 1}"), ("bool", True, "True"), ("nan", float("nan"), "nan"),
                 ("inf", float("inf"), "inf")]
FIGURES = ["gpus.count", "gpus.memory", "gpus.usable_fraction", "gpus.bandwidth", "gpus.compute.bf16",
           "gpus.compute.fp8", "host.memory", "host.bandwidth", "host.cores", "host.reserve", "host.compute.bf16",
           "host_link.bandwidth", "host_link.latency", "host_link.measured", "storage.read_bandwidth",
           "storage.capacity", "storage.random_read_iops", "storage.latency", "efficiency.gpu_bandwidth",
           "efficiency.host_compute"]
BARE = ["gpus.memory", "gpus.bandwidth", "host.memory", "host.bandwidth", "host_link.bandwidth",
        "storage.read_bandwidth", "storage.capacity"]


def _set(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    return data


def _profile_cases() -> list[Case]:
    cases = [Case(f"profile-{f}-{name}", "profile", _set(PROFILE, f, v), (f, shown))
             for f in FIGURES for name, v, shown in PROFILE_WRONG]
    cases += [Case(f"profile-{f}-bare-number", "profile", _set(PROFILE, f, 1792), (f, "1792", "needs a unit"))
              for f in BARE]
    cases += [Case(f"profile-{f}-bare-text", "profile", _set(PROFILE, f, "1e12"), (f, "1e12", "needs a unit"))
              for f in BARE]
    cases += [Case(f"profile-{f}-bad-unit", "profile", _set(PROFILE, f, "12 parsecs"), (f, "parsecs"))
              for f in BARE]
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]"
                                                               for i in range(1, 9)] + ["*a8"]) + "]"
    text = (REPO / "profiles" / "rtx5090.yaml").read_text()
    for field in ("bandwidth: 1792GB/s", "memory: 128GiB", "cores: 16", "storage: 0.85"):
        cases.append(Case(f"profile-alias-bomb-{field.split(':')[0]}", "profile-text",
                          text.replace(field, f"{field.split(':')[0]}: {bomb}", 1), ("alias",)))
    cases.append(Case("profile-not-a-mapping", "profile-text", "- 1\n- 2\n", ("must be a mapping",)))
    cases.append(Case("profile-bad-yaml", "profile-text", "gpus: [\n", ("malformed YAML",)))
    cases.append(Case("profile-deep-yaml", "profile-text", "[" * 5000 + "]" * 5000, ()))
    cases.append(Case("profile-python-tag", "profile-text", "!!python/object/apply:os.system ['true']\n",
                      ("malformed YAML",)))
    return cases


# ---- gates ---------------------------------------------------------------------------------------------
def _gate_cases() -> list[Case]:
    cases = []
    for key in ("kld_mean_max", "kld_p99_max", "top1_min", "ppl_ratio_max", "delta_p_rms_max", "kld_max_max"):
        for name, value, shown in [("negative", -1, "-1"), ("string", "small", "'small'"), ("list", [0.1], "[0.1]"),
                                   ("nan", float("nan"), "nan"), ("inf", float("inf"), "inf"),
                                   ("bool", True, "True"), ("mapping", {"a": 1}, "{'a': 1}"),
                                   ("huge-text", "9" * 4000, "9999")]:
            cases.append(Case(f"gate-{key}-{name}", "gate", {key: value}, (key, shown)))
    for name, value, shown in [("zero", 0, "0"), ("one", 1, "1"), ("negative", -0.5, "-0.5"), ("text", "x", "'x'")]:
        cases.append(Case(f"gate-confidence-{name}", "gate", {"confidence": value, "kld_mean_max": 0.1},
                          ("confidence", shown)))
    cases.append(Case("gate-top1-over-one", "gate", {"top1_min": 1.5}, ("top1_min", "1.5")))
    cases.append(Case("gate-unknown-limit", "gate", {"perplexity_max": 1}, ("perplexity_max", "unknown limit")))
    cases.append(Case("gate-no-limits", "gate", {"confidence": 0.9}, ("no limits",)))
    cases.append(Case("gate-list", "gate-text", "- kld_mean_max: 1\n", ("mapping of limits",)))
    cases.append(Case("gate-empty", "gate-text", "", ("mapping of limits",)))
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]"
                                                               for i in range(1, 9)] + ["*a8"]) + "]"
    cases.append(Case("gate-alias-bomb", "gate-text", f"confidence: 0.95\nkld_mean_max: {bomb}\n", ("alias",)))
    cases.append(Case("gate-alias-bomb-key", "gate-text", f"kld_mean_max: 0.1\nextra: {bomb}\n", ("alias",)))
    return cases


# ---- safetensors headers and indexes (inspect and quantize read them) --------------------------------------
def _header_edits() -> list[tuple[str, object, tuple[str, ...]]]:
    def entry(change):
        def edit(header):
            name = sorted(k for k in header if k != "__metadata__")[0]
            change(header, name)
            return header
        return edit
    edits = []
    for name, dtype in [("unknown", "F3"), ("number", 7), ("null", None), ("list", ["BF16"])]:
        edits.append((f"dtype-{name}", entry(lambda h, n, d=dtype: h[n].__setitem__("dtype", d)), ("dtype",)))
    for name, shape in [("negative", [-1, 4]), ("string", "4x4"), ("floats", [1.5, 2]), ("bools", [True]),
                        ("huge", [2**62, 2**62]), ("nested", [[1]])]:
        edits.append((f"shape-{name}", entry(lambda h, n, s=shape: h[n].__setitem__("shape", s)),
                      ("data_offsets", "needs") if name == "huge" else ("shape",)))
    for name, off in [("reversed", [10, 0]), ("one", [0]), ("strings", ["0", "4"]), ("negative", [-4, 0]),
                      ("past-end", [0, 2**40]), ("null", None)]:
        edits.append((f"offsets-{name}", entry(lambda h, n, o=off: h[n].__setitem__("data_offsets", o)),
                      ("data_offsets",)))
    edits.append(("entry-not-object", entry(lambda h, n: h.__setitem__(n, [1, 2])), ("header entry",)))
    edits.append(("metadata-list", lambda h: {**h, "__metadata__": [1]}, ("__metadata__",)))
    edits.append(("overlap", lambda h: _overlap(h), ("overlaps",)))
    return edits


def _overlap(header: dict) -> dict:
    names = sorted(k for k in header if k != "__metadata__")
    a, b = header[names[0]], header[names[1]]
    if a["data_offsets"][1] - a["data_offsets"][0] == b["data_offsets"][1] - b["data_offsets"][0]:
        header[names[1]] = {**b, "data_offsets": list(a["data_offsets"])}
    else:
        header[names[1]] = {**b, "data_offsets": [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1]
                                                  - b["data_offsets"][0]]}
    return header


def _checkpoint_cases() -> list[Case]:
    cases = []
    for name, edit, words in _header_edits():
        cases.append(Case(f"header-{name}", "header", edit, words))
    raw_edits = [("header-length-huge", lambda d: struct.pack("<Q", 2**63) + d[8:], ("header length",)),
                 ("header-length-zero", lambda d: struct.pack("<Q", 0) + d[8:], ("header",)),
                 ("header-not-json", lambda d: d[:8] + b"\xff" * (len(d) - 8), ("header",)),
                 ("truncated-8", lambda d: d[:5], ("too short",)),
                 ("truncated-payload", lambda d: d[:-16], ("truncated",)),
                 ("trailing-bytes", lambda d: d + b"\0" * 8, ("trailing bytes",)),
                 ("header-is-list", lambda d: struct.pack("<Q", 2) + b"[]" + d[8 + struct.unpack("<Q", d[:8])[0]:],
                  ("must be a JSON object",)),
                 ("header-deep", lambda d: _deep_header(d), ("header",))]
    for name, edit, words in raw_edits:
        cases.append(Case(name, "shard-bytes", edit, words))
    index_edits = [("map-list", {"weight_map": [1]}, ("weight_map",)),
                   ("map-empty", {"weight_map": {}}, ("weight_map",)),
                   ("index-list", [1, 2], ("weight_map",))]
    for name, file, words in [("parent", "../x.safetensors", ("outside",)), ("absolute", "/etc/passwd", ("outside",)),
                              ("nul", "a\0b.safetensors", ("NUL",)), ("number", 7, ("file name",)),
                              ("empty", "", ("file name",)), ("dot", ".", ("outside",)),
                              ("missing", "nothere.safetensors", ("does not exist",)),
                              ("backslash", "..\\x.safetensors", ("outside",)), ("list", ["a"], ("file name",)),
                              ("subdir", "sub/x.safetensors", ("outside",))]:
        index_edits.append((f"weight-map-{name}", ("file", file), ("weight_map.",) + words))
    for name, data, words in index_edits:
        cases.append(Case(f"index-{name}", "index", data, words))
    cases.append(Case("index-deep", "index-text", "[" * 50_000 + "]" * 50_000, ("not valid JSON",)))
    cases.append(Case("index-not-json", "index-text", "{", ("not valid JSON",)))
    return cases


def _deep_header(data: bytes) -> bytes:
    raw = b"[" * 100_000 + b"]" * 100_000
    n = struct.unpack("<Q", data[:8])[0]
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


# ---- plan files (quantize --plan, run --plan) ---------------------------------------------------------------
PLAN_EDITS = [
    ("not-object", lambda p: [1], ("plan",)),
    ("groups-missing", lambda p: {k: v for k, v in p.items() if k != "groups"}, ("groups",)),
    ("groups-string", lambda p: {**p, "groups": "all"}, ("groups",)),
    ("group-not-object", lambda p: {**p, "groups": [1] + p["groups"][1:]}, ("groups[0]",)),
    ("tier-unknown", lambda p: _group(p, tier="tpu:0"), ("groups[0].tier", "tpu:0")),
    ("tier-number", lambda p: _group(p, tier=3), ("groups[0].tier",)),
    ("tier-null", lambda p: _group(p, tier=None), ("groups[0].tier",)),
    ("tier-nul", lambda p: _group(p, tier="gpu:0\0"), ("groups[0].tier",)),
    ("bytes-text", lambda p: _group(p, bytes="many"), ("groups[0]",)),
    ("role-unknown", lambda p: _group(p, role="brain", format="int4-g128"), ("groups[0].role", "brain")),
    ("format-unknown", lambda p: _group(p, format="fp3", role="routed_experts"), ("format", "fp3")),
    ("execution-list", lambda p: _group(p, execution=[1]), ("groups[0]",)),
    ("name-number", lambda p: _group(p, name=5), ("groups[0]",)),
    ("workload-missing", lambda p: {k: v for k, v in p.items() if k != "workload"}, ("workload",)),
    ("workload-context-negative", lambda p: {**p, "workload": {**p["workload"], "context_tokens": -1}},
     ("workload.context_tokens", "-1")),
    ("workload-batch-text", lambda p: {**p, "workload": {**p["workload"], "batch": "x"}}, ("workload.batch",)),
    ("fingerprint-missing", lambda p: {k: v for k, v in p.items() if k != "fingerprint"}, ("fingerprint",)),
    ("fingerprint-list", lambda p: {**p, "fingerprint": [1]}, ("fingerprint",)),
    ("fingerprint-other-model", lambda p: {**p, "fingerprint": {**p["fingerprint"], "model": {"tensors": 1}}},
     ("fingerprint.model",)),
    ("kv-pool-tier", lambda p: {**p, "kv_cache": {**p["kv_cache"], "pools": [{"name": "x", "tier": "disk",
                                                                                "bytes": 1}]}},
     ("kv_cache.pools[0].tier", "disk")),
    ("kv-pools-string", lambda p: {**p, "kv_cache": {**p["kv_cache"], "pools": "x"}}, ("kv_cache.pools",)),
    ("devices-dict", lambda p: {**p, "devices": {"a": 1}}, ("devices",)),
    ("devices-unhashable-name", lambda p: {**p, "devices": [{"name": [1], "capacity_bytes": 1, "used_bytes": 1,
                                                             "breakdown": {}}]}, ("devices[0].name",)),
    ("sweep", lambda p: {"points": [], "sweep": {}}, ("a sweep",)),
    ("deep", lambda p: "[" * 50_000 + "]" * 50_000, ("nested too deeply",)),
]


def _group(plan: dict, **changes) -> dict:
    plan = copy.deepcopy(plan)
    plan["groups"][0].update(changes)
    return plan


def _plan_cases() -> list[Case]:
    cases = []
    for command in ("run", "quantize"):
        for name, edit, words in PLAN_EDITS:
            if command == "quantize" and name in ("tier-unknown", "tier-number", "tier-null", "tier-nul",
                                                  "bytes-text", "execution-list", "name-number", "kv-pool-tier",
                                                  "kv-pools-string", "devices-dict", "devices-unhashable-name",
                                                  "workload-missing", "workload-context-negative",
                                                  "workload-batch-text", "sweep"):
                continue    # fields quantize --plan does not read (it reads groups' formats and the fingerprint)
            if command == "run" and name in ("role-unknown", "format-unknown"):
                continue    # run places by group name and tier; roles and formats are quantize's
            cases.append(Case(f"plan-{command}-{name}", f"plan-{command}", edit, words))
    return cases


# ---- CLI numbers and paths ---------------------------------------------------------------------------------
NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1e400", "abc", "", "1.5", "0x10", "99999999999999999999999"]


def _cli_cases() -> list[Case]:
    cases = []
    plan = ("plan", "--profile", "rtx5090", "--model", "tiny-deepseek-v4")
    for option in ("--context", "--batch", "--prefill-chunk"):
        for value in NUMBERS:
            if option == "--context" and value in ("1.5",):
                continue
            cases.append(Case(f"cli-plan{option}={value}", "argv", plan + (option, value), (option,)))
    for value in ("0", "-0.5", "1.5", "nan", "abc", "inf"):
        cases.append(Case(f"cli-plan--gpu-mem-util={value}", "argv", plan + ("--gpu-mem-util", value),
                          ("--gpu-mem-util",)))
    for value in ("0", "-1GiB", "abc", "1e400GiB", "128", "1e12"):
        cases.append(Case(f"cli-plan--host-mem={value}", "argv", plan + ("--host-mem", value), ("--host-mem",)))
    for value in ("0.2", "2:0.6", "0.2:2", "a:b", "nan:nan", "-0.1:0.5", ":"):
        cases.append(Case(f"cli-plan--expert-skew={value}", "argv", plan + ("--expert-skew", value),
                          ("--expert-skew",)))
    for value in ("fp3", "", "int4;rm -rf /"):
        cases.append(Case(f"cli-plan--policy={value}", "argv", plan + ("--policy", value), ("--policy",)))
    for value in ("context=", "context=-1", "color=1,2", "=1", "batch=a,b"):
        cases.append(Case(f"cli-plan--sweep={value}", "argv", plan + ("--sweep", value), ("--sweep",)))
    golden = ("validate", "--golden", GOLDEN_QWEN, "--candidate", QWEN)
    for option, value in [("--chunk", "-5"), ("--chunk", "0"), ("--chunk", "3"), ("--max-chunks", "0"),
                          ("--max-chunks", "-2"), ("--topk", "0"), ("--tail-samples", "-1"), ("--device", "tpu"),
                          ("--chunk", "abc")]:
        cases.append(Case(f"cli-validate{option}={value}", "argv", golden + (option, value), (option,)))
    for option, value in [("--workers", "-1"), ("--workers", "65"), ("--workers", "x"), ("--device", "cuda:x"),
                          ("--recipe", "fp3"), ("--recipe", "")]:
        cases.append(Case(f"cli-quantize{option}={value}", "quantize-argv", (option, value), (option,)))
    for name, args, words in [
        ("inspect-missing", ("inspect", "/nonexistent/model"), ("/nonexistent/model",)),
        ("inspect-dev-null", ("inspect", "/dev/null"), ("/dev/null",)),
        ("inspect-proc", ("inspect", "/proc/self/status"), ("/proc/self/status",)),
        ("profile-missing", ("profile", "show", "/nonexistent.yaml"), ("/nonexistent.yaml",)),
        ("profile-folder", ("profile", "show", "/tmp"), ("/tmp",)),
        ("quantize-src-missing", ("quantize", "/nonexistent/src", "OUT", "--recipe", "fp8"), ("/nonexistent/src",)),
        ("quantize-src-is-file", ("quantize", str(QWEN / "config.json"), "OUT", "--recipe", "fp8"), ("config.json",)),
        ("quantize-out-inside-src", ("quantize", str(TINY_V4), str(TINY_V4 / "o"), "--recipe", "fp8"), ("never",)),
        ("quantize-out-is-file", ("quantize", str(TINY_V4), str(QWEN / "config.json"), "--recipe", "fp8"),
         ("not a folder",)),
        ("quantize-recipe-missing-file", ("quantize", str(TINY_V4), "OUT", "--recipe", "/nonexistent.yaml"),
         ("--recipe",)),
        ("quantize-plan-missing", ("quantize", str(TINY_V4), "OUT", "--plan", "/nonexistent.json"),
         ("/nonexistent.json",)),
        ("validate-candidate-missing", ("validate", "--golden", str(GOLDEN_QWEN), "--candidate", "/nonexistent"),
         ("/nonexistent",)),
        ("validate-golden-not-safetensors", ("validate", "--golden", str(QWEN / "config.json"), "--candidate",
                                             str(QWEN)), ("config.json",)),
        ("validate-eval-missing", ("validate", "--reference", str(QWEN), "--candidate", str(QWEN), "--eval",
                                   "/nonexistent.txt"), ("/nonexistent.txt",)),
        ("run-plan-missing", ("run", str(TINY_V4), "--plan", "/nonexistent.json"), ("/nonexistent.json",)),
        ("export-model-missing", ("export", "onnx", "/nonexistent", "OUT", "--target", "cpu-fp32"),
         ("/nonexistent",)),
        ("export-target-unknown", ("export", "onnx", str(QWEN), "OUT", "--target", "../../etc/passwd"),
         ("--target",)),
        ("plan-out-missing-folder", ("plan", "--profile", "rtx5090", "--model", "tiny-deepseek-v4", "--out",
                                     "/nonexistent/dir/plan.json"), ("/nonexistent/dir/plan.json",)),
        ("plan-model-traversal", ("plan", "--profile", "rtx5090", "--model", "../../etc/passwd"),
         ("../../etc/passwd",)),
        ("plan-profile-traversal", ("plan", "--profile", "../../etc/passwd"), ("../../etc/passwd",)),
    ]:
        cases.append(Case(f"cli-path-{name}", "argv-out", args, words))
    return cases


CASES = _config_cases() + _profile_cases() + _gate_cases() + _checkpoint_cases() + _plan_cases() + _cli_cases()


def test_the_corpus_is_large_and_covers_every_kind():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 400 and kinds == {"config", "profile", "gate", "header", "truncated", "trailing", "index",
                                           "plan", "cli"}, (len(CASES), kinds)
    assert len({c.id for c in CASES}) == len(CASES)


# ---- running one case -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Inputs that cases edit: a small checkpoint (tiny-v4 fixture copy) and a valid plan for it."""
    import shutil
    root = tmp_path_factory.mktemp("fuzz")
    ckpt = root / "ckpt"
    shutil.copytree(TINY_V4, ckpt)
    plan = root / "plan.json"
    made = run_inproc("plan", "--profile", "rtx5090", "--model", ckpt, "--context", "256", "--policy", "int4",
                      "--out", plan, "--json")
    assert made.code == 0, made.stderr
    return {"ckpt": ckpt, "plan": json.loads(plan.read_text())}


def _shard(folder: Path) -> Path:
    return sorted(folder.glob("*.safetensors"))[0]


def _rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = edit(json.loads(data[8:8 + n]))
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _prepare(case: Case, tmp: Path, work: dict) -> tuple[tuple, Path | None, str | None]:
    """(argv, OUT that must stay empty, file the line must name)."""
    import shutil
    out = tmp / "out"
    kind, p = case.kind, case.payload
    if kind in ("config", "config-text", "config-bytes"):
        path = tmp / "config.json"
        path.write_bytes(p if kind == "config-bytes" else (p if kind == "config-text" else json.dumps(p)).encode())
        return ("inspect", path), None, str(path)
    if kind in ("profile", "profile-text"):
        path = tmp / "profile.yaml"
        path.write_text(p if kind == "profile-text" else yaml.safe_dump(p))
        plan = tmp / "plan.json"     # must not be written
        return ("plan", "--profile", path, "--model", "tiny-deepseek-v4", "--out", plan), plan, str(path)
    if kind in ("gate", "gate-text"):
        path = tmp / "gate.yaml"
        path.write_text(p if kind == "gate-text" else yaml.safe_dump(p))
        return ("validate", "--golden", GOLDEN_QWEN, "--candidate", QWEN, "--gate", path), None, str(path)
    if kind in ("header", "shard-bytes", "index", "index-text"):
        folder = tmp / "ckpt"
        shutil.copytree(work["ckpt"], folder)
        index = folder / "model.safetensors.index.json"
        named = str(index)
        if kind == "header":
            _rewrite_header(_shard(folder), p)
            named = _shard(folder).name
        elif kind == "shard-bytes":
            _shard(folder).write_bytes(p(_shard(folder).read_bytes()))
            named = _shard(folder).name
        elif kind == "index-text":
            index.write_text(p)
        elif isinstance(p, tuple):
            data = json.loads(index.read_text())
            data["weight_map"][sorted(data["weight_map"])[0]] = p[1]
            index.write_text(json.dumps(data))
        else:
            index.write_text(json.dumps(p))
        return ("quantize", folder, out, "--recipe", "fp8"), out, named
    if kind.startswith("plan-"):
        path = tmp / "plan.json"
        plan = p(copy.deepcopy(work["plan"]))
        path.write_text(plan if isinstance(plan, str) else json.dumps(plan))
        if kind == "plan-run":
            return ("run", work["ckpt"], "--plan", path, "--profile", "rtx5090", "--device-map", "gpu:0=cpu"), \
                None, str(path)
        return ("quantize", work["ckpt"], out, "--plan", path), out, str(path)
    if kind == "argv":
        return p, None, None
    if kind == "quantize-argv":
        return ("quantize", work["ckpt"], out) + p, out, None
    if kind == "argv-out":
        return tuple(str(out) if a == "OUT" else a for a in p), out, None
    raise AssertionError(kind)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, tmp_path, work):
    args, out, named = _prepare(case, tmp_path, work)
    started = time.perf_counter()
    result = run_inproc(*args)
    elapsed = time.perf_counter() - started
    line = one_line_error(result, *case.words)
    if named is not None:
        assert named in line, (named, line)
    if out is not None:
        assert tree(out) == {} and not out.exists(), sorted(tree(out))
    assert elapsed < SECONDS, elapsed
    assert len(line) < 1200


@pytest.mark.parametrize("case", [c for c in CASES if c.id in (
    "config-tiny-deepseek-v4-hidden_size-deep", "profile-alias-bomb-bandwidth", "gate-alias-bomb",
    "index-weight-map-nul", "plan-run-tier-unknown", "cli-plan--context=nan", "trailing-bytes")],
    ids=lambda c: c.id)
def test_hostile_input_as_a_subprocess(case, tmp_path, work):
    """The same contract through a real ``python -m mv4deploy`` (exit status, streams, interpreter start)."""
    args, out, named = _prepare(case, tmp_path, work)
    result = run_cli(*args, timeout=30)
    line = one_line_error(result, *case.words)
    assert named is None or named in line
    assert out is None or not out.exists()


def test_every_number_parser_refuses_non_finite():
    """A guard for the corpus itself: the values above that must fail really are not finite numbers."""
    assert math.isnan(float("nan")) and not math.isfinite(float("1e400"))
