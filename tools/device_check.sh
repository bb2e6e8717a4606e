#!/usr/bin/env bash
# The GPU check of a bare machine in one run: a GPU, its own torch with CUDA and nvcc, no mmcv or
# mmdet, no network. docs/benchmarks.md#gpu-machine says how it is run and what it writes.
#
#   bash tools/device_check.sh --prepare DIR        on a machine with network: the wheels the GPU
#                                                   machine lacks, and mmcv's source, into DIR
#   bash tools/device_check.sh --bundle DIR [--out DIR] [--minutes M]
#                                                   on the GPU machine, from the checkout's root
#
# The run: install DIR's wheels in front of the machine's own packages (its torch), build
# mmcv 2.1.0's CUDA ops for this GPU's architecture with every core, check them (a DCN, RoIAlign
# and NMS), run the CUDA tests and the CPU tests that must also pass where a GPU is, then
# tools/check_gpu.py and tools/benchmark_layers.py --device cuda --repeat 20. Each stage gets what
# is left of M minutes (default 9), the last ones are cut first; the output folder (default $OUT)
# gets the logs, the reports and summary.md (the stages, their status and seconds), printed last.
set -uo pipefail
caller=$(pwd)  # DIR arguments are relative to where the script was called from
cd "$(dirname "$0")/.."
repo=$(pwd)
absolute() { [[ $1 == /* ]] && echo "$1" || echo "$caller/$1"; }

# pure-Python wheels (any platform) and binary ones for CPython 3.12 on x86-64 Linux; versions as in
# the .venv that tools/bootstrap.sh builds. The GPU machine's image has torch, numpy, scipy,
# matplotlib, pillow, pyyaml, rich, opencv, pytest, pytest-xdist and wheel.
PURE=(mmengine==0.10.7 mmdet==3.3.0 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.9
      terminaltables==3.1.10 setuptools==80.9.0)
BINARY=(pycocotools==2.0.11 shapely==2.2.0 ninja==1.13.2)
PY_TAG=${DEVICE_PYTHON_VERSION:-3.12}

prepare() {
    local dir=${1%/} py=${PYTHON:-python3}
    mkdir -p "$dir"
    local platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_TAG" --implementation cp \
        "${platforms[@]}" -d "$dir" "${PURE[@]}" "${BINARY[@]}" || return 1
    "$py" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$dir" mmcv==2.1.0 || return 1
    # inside the checkout: ignored by git, so that only a run that carries it takes it along
    dir=$(cd "$dir" && pwd)
    if [[ $dir == "$repo"/* ]] && ! git check-ignore -q "$dir"; then
        echo "/${dir#"$repo"/}/" >>"$(git rev-parse --git-path info/exclude)"
    fi
    ls -l "$dir"
    du -sh "$dir"
    echo "carry ${dir#"$repo"/} to the GPU machine; there: bash tools/device_check.sh --bundle ${dir#"$repo"/} --out \$OUT"
}

bundle='' out=${OUT:-} minutes=9
while [[ $# -gt 0 ]]; do
    case $1 in
        --prepare) prepare "$(absolute "$2")"; exit $? ;;
        --bundle) bundle=$(absolute "$2"); shift 2 ;;
        --out) out=$(absolute "$2"); shift 2 ;;
        --minutes) minutes=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n $bundle && -d $bundle ]] || { echo "device_check.sh: --bundle DIR (made by --prepare) is needed" >&2; exit 2; }
bundle=$(cd "$bundle" && pwd)
out=${out:-$repo/work_dirs/device_check}
mkdir -p "$out"
work=$(mktemp -d /tmp/device_check.XXXX)
log="$out/log.txt"
summary="$out/summary.md"
start=$(date +%s)
deadline=$((start + minutes * 60))
: >"$log"
printf '| stage | status | seconds |\n|---|---|---|\n' >"$summary"
failed=0

say() { printf '[device_check %4ds] %s\n' "$(($(date +%s) - start))" "$*" | tee -a "$log" >&2; }

# stage NAME RESERVE COMMAND: run the COMMAND string (functions below are exported) with a time limit
# of what is left minus RESERVE seconds, kept for the stages after it; output into the log; a stage
# with under 20 s left is skipped. timeout kills the command's whole process group.
stage() {
    local name=$1 reserve=$2 command=$3 t0 limit rc status
    t0=$(date +%s)
    limit=$((deadline - t0 - reserve))
    if ((limit < 20)); then
        say "$name: skipped, $((deadline - t0)) s left"
        printf '| %s | skipped (no time left) | 0 |\n' "$name" >>"$summary"
        failed=1
        return 1
    fi
    say "$name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" bash -c "$command" >>"$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="cut at ${limit}s"; failed=1 ;;
        *) status="failed (exit $rc)"; failed=1 ;;
    esac
    say "$name: $status"
    printf '| %s | %s | %d |\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$summary"
    return $rc
}

finish() {
    say "done in $(($(date +%s) - start)) s; outputs in $out"
    printf '\nmachine: %s\n' "$(nvidia-smi -L 2>/dev/null | head -1)" >>"$summary"
    cat "$summary"
    rm -rf "$work"
    exit $failed
}

# --------------------------------------------------------------------------------- the machine
# The machine's own python (its torch); the bundle goes into a folder in front of its packages.
# Not a venv: one made from a venv's python would not see that venv's packages (torch).
py=${DEVICE_PYTHON:-python3}
site="$work/site"
base_bin=$("$py" -c 'import os, sys; print(os.path.dirname(sys.executable))')
export PATH="$site/bin:$base_bin:/usr/local/cuda/bin:$PATH"
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")}
{
    echo "## Machine"
    echo; echo '```'
    nvidia-smi 2>&1 | head -15
    "$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda,
        torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1
    nvcc --version 2>&1 | tail -2
    echo "cores $(nproc), $(grep MemTotal /proc/meminfo)"
    echo '```'
} >"$out/machine.md"
cat "$out/machine.md" >>"$log"

# --------------------------------------------------------------------------------- install
# the bundle's packages, then deform_viz from the checkout, in front of the machine's own: for the
# tools, the tests and torchrun's ranks alike (python -P below: no script folder, PYTHONPATH kept)
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}" DEFORM_VIZ_PYTHON="$py" MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
install() {
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$bundle"/*.whl &&
    "$py" -c 'import setuptools, torch, numpy, mmengine  # mmdet imports mmcv, built next
print("torch", torch.__version__, "numpy", numpy.__version__, "mmengine", mmengine.__version__,
      "setuptools", setuptools.__version__, setuptools.__file__)'
}
export -f install
export py site work bundle out repo
stage install 450 install || finish

# --------------------------------------------------------------------------------- mmcv's CUDA ops
build_mmcv() {
    local plan want tag arch jobs reason
    # the machine's RAM grows as it is used: MAX_JOBS is set above, not read off MemAvailable
    plan=$(DEFORM_VIZ_CUDA=1 "$py" -P deform_viz/_cuda_build.py plan) || return 1
    read -r want tag arch jobs reason <<<"$plan"
    echo "$reason; $jobs jobs"
    tar -xzf "$bundle"/mmcv-2.1.0.tar.gz -C "$work" || return 1
    if "$py" -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])) < (2, 14))"
    then sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-2.1.0/setup.py"; fi
    env MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$jobs" \
        "$py" -m pip wheel --no-index --no-build-isolation --no-deps -w "$work/dist" "$work/mmcv-2.1.0" \
        >"$work/build.log" 2>&1
    local rc=$?
    tail -n 60 "$work/build.log"
    grep -E 'error|Error' "$work/build.log" | head -40
    ((rc == 0)) || return $rc
    "$py" -m pip install --quiet --no-index --no-deps --target "$site" "$work"/dist/mmcv-2.1.0-*.whl &&
    "$py" -P deform_viz/_cuda_build.py verify 1
}
export -f build_mmcv
stage mmcv-cuda-build 130 build_mmcv || finish

# --------------------------------------------------------------------------------- tests and reports
pytest_run() { "$py" -m pytest -q -rs -p no:cacheprovider "$@"; }
export -f pytest_run
# the CUDA cases of the layer and op tests: every one has 'cuda' in its id
stage cuda-tests 90 "pytest_run tests/layers tests/ops -k cuda"
stage check-gpu 25 '"$py" tools/check_gpu.py --out "$out/check_gpu" --steps 3 --warmup 1'
stage benchmark-layers 0 'set -o pipefail; "$py" tools/benchmark_layers.py --device cuda --repeat 20 | tee "$out/benchmark_layers.md"'
# the tests written on CPU whose path differs where a GPU is (--amp, the 2-rank dump pinned to CPU,
# the launchers, the import and bootstrap checks), with the time left
stage gpu-machine-tests 0 "pytest_run tests/test_engine.py tests/hooks/test_offset_dump_hook.py tests/test_launchers.py \
    tests/test_package.py tests/test_bootstrap.py tests/test_check_gpu.py -k 'amp or two_ranks or launchers or package or bootstrap or check_gpu'"
finish
