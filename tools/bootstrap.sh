#!/usr/bin/env bash
# Idempotent set-up of .venv: torch, mmcv 2.1.0 with compiled ops (wheel cached outside the
# repo), mmdet 3.3.0, mmengine and deform-viz itself in editable mode.
#
# Environment knobs:
#   DEFORM_VIZ_TORCH       torch requirement         (default: torch==2.13.0)
#   DEFORM_VIZ_TORCH_INDEX extra index for torch, e.g. https://download.pytorch.org/whl/cu121
#   DEFORM_VIZ_CUDA        1: mmcv with CUDA ops, 0: CPU-only ops (default: CUDA when this machine
#                          has a GPU or TORCH_CUDA_ARCH_LIST names architectures)
#   TORCH_CUDA_ARCH_LIST   GPU architectures to build for, e.g. "8.0;9.0" (default: this machine's)
#   MAX_JOBS               compiler jobs             (default: one per core, as many as memory holds)
#   DEFORM_VIZ_CACHE       wheel cache               (default: ~/.cache/deform-viz)
#   PYTHON                 interpreter for the venv  (default: python3.11, else python3)
#
# The CUDA choice, its checks (a CUDA build of torch, an nvcc of torch's CUDA major version) and the
# check of the installed ops (a tiny DCN, RoIAlign and NMS on the GPU) are deform_viz/_cuda_build.py.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
venv="$repo/.venv"
torch_req=${DEFORM_VIZ_TORCH:-torch==2.13.0}
cache=${DEFORM_VIZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deform-viz}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
log() { printf '[bootstrap] %s\n' "$*" >&2; }

# Headless Chromium for the offset browser's tests (tests/visualization/test_browser.py), checked
# on every run since it lives outside the venv. Without it those tests skip, or fail under CI=true.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing Debian's chromium and chromium-driver for the browser tests"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver >/dev/null; } || log 'apt-get could not install chromium: browser tests will skip'
    else
        log 'chromium or chromedriver missing (installing them needs root and apt-get): browser tests will skip'
    fi
fi

# Everything the stamp depends on: if none of it changed, there is nothing to do. The GPUs the
# driver reports are part of it, so a venv built on a node without a GPU is rebuilt on one with.
gpus=$( { cat /proc/driver/nvidia/gpus/*/information 2>/dev/null | grep -i '^model' || true; \
          ls /dev 2>/dev/null | grep -E '^nvidia[0-9]+$' || true; } | tr '\n' ' ')
stamp_key=$( { echo "$torch_req ${DEFORM_VIZ_TORCH_INDEX:-} cuda=${DEFORM_VIZ_CUDA:-} arch=${TORCH_CUDA_ARCH_LIST:-}"
               echo "gpus=$gpus"; cat setup.cfg pyproject.toml tools/bootstrap.sh deform_viz/_cuda_build.py; } \
             | sha256sum | cut -c1-16)
stamp="$venv/.deform-viz-$stamp_key"
if [[ -f "$stamp" ]]; then
    exit 0
fi

[[ -x "$venv/bin/python" ]] || { log "creating $venv"; "$python" -m venv "$venv"; }
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
# setuptools >= 77 for torch's metadata, < 81 because mmcv's setup.py imports pkg_resources.
"${pip[@]}" install 'setuptools>=77,<81' wheel ninja
index_args=()
[[ -n "${DEFORM_VIZ_TORCH_INDEX:-}" ]] && index_args=(--extra-index-url "$DEFORM_VIZ_TORCH_INDEX")
"${pip[@]}" install "${index_args[@]}" "$torch_req" 'numpy<2'

torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
# CUDA ops or not, stated: "want_cuda tag arch_list max_jobs reason", or an error naming the fix
previous=$(head -n 1 "$venv"/.deform-viz-* 2>/dev/null || true)  # the last install's plan, if any
plan=$(DEFORM_VIZ_PREVIOUS_PLAN="$previous" "$venv/bin/python" -I deform_viz/_cuda_build.py plan) || exit 1
read -r want_cuda cuda_tag arch_list max_jobs reason <<<"$plan"
log "$reason"
wheel_dir="$cache/mmcv-2.1.0/torch$torch_version-$cuda_tag"
if ! compgen -G "$wheel_dir/mmcv-2.1.0-*.whl" >/dev/null; then
    if [[ $want_cuda == 1 ]]; then
        log "building mmcv 2.1.0 with CUDA ops for torch $torch_version ($cuda_tag), $max_jobs jobs"
    else
        log "building mmcv 2.1.0 with CPU ops for torch $torch_version, $max_jobs jobs; this takes ~16 min on 2 cores"
    fi
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    "${pip[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$build" mmcv==2.1.0
    tar -xzf "$build"/mmcv-2.1.0.tar.gz -C "$build"
    # mmcv 2.1.0 hard-codes -std=c++17; torch >= 2.14 headers demand C++20. Raise it only then,
    # since older CUDA toolkits' nvcc lack C++20.
    if "$venv/bin/python" -c "import sys, torch; v = tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])); sys.exit(v < (2, 14))"; then
        log "torch >= 2.14: compiling mmcv with -std=c++20"
        sed -i 's/-std=c++17/-std=c++20/g' "$build/mmcv-2.1.0/setup.py"
    fi
    # mmcv's setup.py builds CUDA ops whenever torch sees a GPU: hide it for a CPU-only build
    build_env=(MMCV_WITH_OPS=1 FORCE_CUDA="$want_cuda" MAX_JOBS="$max_jobs")
    if [[ $want_cuda == 1 ]]; then build_env+=(TORCH_CUDA_ARCH_LIST="$arch_list"); else build_env+=(CUDA_VISIBLE_DEVICES=); fi
    env "${build_env[@]}" "${pip[@]}" wheel --no-build-isolation --no-deps -w "$build/dist" "$build/mmcv-2.1.0"
    mkdir -p "$wheel_dir"
    # Copy then rename, so a killed build never leaves a half-written wheel in the cache.
    whl=$(basename "$build"/dist/mmcv-2.1.0-*.whl)
    cp "$build/dist/$whl" "$wheel_dir/.$whl.tmp" && mv "$wheel_dir/.$whl.tmp" "$wheel_dir/$whl"
else
    log "reusing cached mmcv wheel from $wheel_dir"
fi
"${pip[@]}" install "$wheel_dir"/mmcv-2.1.0-*.whl
# the same version may be installed with the other kind of ops: replace it
"${pip[@]}" install --force-reinstall --no-deps "$wheel_dir"/mmcv-2.1.0-*.whl
"${pip[@]}" install -e "$repo[tests]"
# CPU-only ops on a machine with a GPU (DEFORM_VIZ_CUDA=0) are checked as they will be run: GPUs hidden
check_env=(); [[ $want_cuda == 0 ]] && check_env=(CUDA_VISIBLE_DEVICES=)
env "${check_env[@]}" "$venv/bin/python" -I deform_viz/_cuda_build.py verify "$want_cuda" "$wheel_dir" \
    || { log "refusing this venv: its mmcv does not work as planned (no stamp written)"; exit 1; }
env "${check_env[@]}" "$venv/bin/python" -c "import deform_viz" || { log "import deform_viz failed after install"; exit 1; }
rm -f "$venv"/.deform-viz-*
echo "$plan" >"$stamp"
log "ready: $venv"
