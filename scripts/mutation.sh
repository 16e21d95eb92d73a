#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (in the dev extra), one module at a time, each against
# only the test files that exercise it. Slow (minutes per module), so it is not part of .ci/run; the tests
# that kill the mutants are, and run in the default `pytest` run. Results: docs/ci.md, "Mutation testing".
#
# Usage: scripts/mutation.sh [MODULE ...]     MODULE as in the table below, e.g. core/units; none = all
#   MUTATION_DIR   scratch folder (default /tmp/mv4deploy-mutation); each module gets its own copy of the tree
#   MUTATION_JOBS  parallel mutant runs (default 2)
# Prints one line per module: "module killed/total (score %)", then the surviving mutants' names
# (`mutmut show NAME` inside $MUTATION_DIR/MODULE prints the diff of one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-python}
scratch=${MUTATION_DIR:-/tmp/mv4deploy-mutation}
jobs=${MUTATION_JOBS:-2}

# module (under mv4deploy/) -> the test files that exercise it (a file not there yet is skipped)
FORMATS_TESTS="tests/test_formats_reference.py tests/test_formats_roundtrip.py tests/test_formats_kernels.py
    tests/test_formats_kernels_fast.py"
# the planner's tests that call it in-process (the CLI tests run it in a subprocess, which mutmut does not see),
# less test_plan_properties and test_hints: 20 of their 29 s, paid again by every surviving mutant
PLAN_TESTS="tests/test_plan_units.py tests/test_plan_scenarios.py tests/test_plan_golden.py
    tests/test_plan_engines.py tests/test_engines.py tests/test_probe.py tests/test_run_split.py
    tests/test_engram_model.py"
declare -A TESTS=(
    [core/units]="tests/test_units.py tests/test_plan_units.py tests/test_profiles.py"
    [formats/dtypes]="tests/test_formats_roundtrip.py"
    [formats/kernels_fp]="$FORMATS_TESTS tests/test_formats_kernels_fp.py"
    [formats/kernels_int]="$FORMATS_TESTS tests/test_formats_kernels_int.py"
    [formats/kernels_nvfp4]="$FORMATS_TESTS tests/test_formats_kernels_nvfp4.py"
    [formats/kernels_mnb]="$FORMATS_TESTS tests/test_export_formats.py tests/test_formats_kernels_mnb.py"
    [validate/stats]="tests/test_metrics.py tests/test_gate.py tests/test_validate_stats_exact.py"
    [validate/metrics]="tests/test_metrics.py tests/test_validate_stats_exact.py"
    [validate/compressed]="tests/test_metrics_compressed.py tests/test_validate_compressed_exact.py"
    [plan/costs]="$PLAN_TESTS tests/test_plan_costs_exact.py"
    [plan/estimates]="$PLAN_TESTS tests/test_plan_estimates_exact.py"
    [plan/placement]="$PLAN_TESTS"
    [validate/gate]="tests/test_gate.py tests/test_validate_loader.py tests/test_validate_gate_exact.py"
    [export/verify]="tests/test_export_static.py tests/test_validate_loader.py tests/test_export_verify_exact.py"
    [model/inventory_deepseek]="tests/test_inventory.py tests/test_inventory_deepseek_exact.py"
    [model/tensors]="tests/test_inventory.py tests/test_inventory_deepseek_exact.py"
)
ORDER=(core/units formats/dtypes formats/kernels_fp formats/kernels_int formats/kernels_nvfp4 formats/kernels_mnb
       validate/stats validate/metrics validate/compressed plan/costs plan/estimates plan/placement validate/gate export/verify
       model/inventory_deepseek model/tensors)

toml_list() { local out="" x; for x in "$@"; do out+="\"$x\", "; done; echo "[${out%, }]"; }

run_module() {
    local module=$1 dir="$scratch/${1//\//_}"
    [ -n "${TESTS[$module]:-}" ] || { echo "unknown module $module; one of: ${ORDER[*]}" >&2; exit 2; }
    local -a tests=()
    for t in ${TESTS[$module]}; do [ -f "$t" ] && tests+=("$t"); done
    rm -rf "$dir" && mkdir -p "$dir"
    # the working tree as git sees it (tracked and new files), without build outputs
    git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$dir"
    cat >>"$dir/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["mv4deploy"]
only_mutate = ["mv4deploy/$module.py"]
pytest_add_cli_args_test_selection = $(toml_list "${tests[@]}")
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-q"]
also_copy = ["profiles", "exporters", "tasks", "engines"]
EOF
    (cd "$dir" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$python" -m mutmut run --max-children "$jobs" >mutmut.log 2>&1) || {
        tail -30 "$dir/mutmut.log" >&2; exit 1; }
    (cd "$dir" && "$python" -m mutmut results --all true >results.txt 2>&1 || true)
    "$python" - "$module" "$dir/results.txt" <<'PY'
import collections, sys
module, path = sys.argv[1], sys.argv[2]
status = {}
for line in open(path):
    if ":" in line and "__mutmut_" in line:
        name, _, state = line.strip().rpartition(": ")
        status[name.strip()] = state.strip()
counts = collections.Counter(status.values())
total = sum(counts.values())
killed = counts.get("killed", 0) + counts.get("timeout", 0)
print(f"{module}: {killed}/{total} killed ({100 * killed / max(total, 1):.0f} %)  {dict(counts)}")
for name, state in sorted(status.items()):
    if state not in ("killed", "timeout"):
        print(f"    {state}: {name}")
PY
}

if [ $# -eq 0 ]; then set -- "${ORDER[@]}"; fi
for module in "$@"; do run_module "$module"; done
