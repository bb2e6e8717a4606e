#!/usr/bin/env bash
# Idempotent set-up of .venv: torch, mmcv 2.1.0 with compiled ops (wheel cached outside the
# repo), mmdet 3.3.0, mmengine and deform-viz itself in editable mode.
#
# Environment knobs:
#   DEFORM_VIZ_TORCH       torch requirement         (default: torch==2.13.0)
#   DEFORM_VIZ_TORCH_INDEX extra index for torch, e.g. https://download.pytorch.org/whl/cu121
#   DEFORM_VIZ_CACHE       wheel cache               (default: ~/.cache/deform-viz)
#   PYTHON                 interpreter for the venv  (default: python3.11, else python3)
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

# Everything the stamp depends on: if none of it changed, there is nothing to do.
stamp_key=$( { echo "$torch_req ${DEFORM_VIZ_TORCH_INDEX:-}"; cat setup.cfg pyproject.toml tools/bootstrap.sh; } | sha256sum | cut -c1-16)
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

read -r torch_version cuda_tag < <("$venv/bin/python" - <<'PY'
import torch
cuda = torch.version.cuda
print(torch.__version__.split('+')[0], f"cu{cuda.replace('.', '')}" if cuda and torch.cuda.is_available() else 'cpu')
PY
)
wheel_dir="$cache/mmcv-2.1.0/torch$torch_version-$cuda_tag"
if ! compgen -G "$wheel_dir/mmcv-2.1.0-*.whl" >/dev/null; then
    log "building mmcv 2.1.0 with ops for torch $torch_version ($cuda_tag); this takes ~16 min on 2 cores"
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
    force_cuda=0; [[ $cuda_tag != cpu ]] && force_cuda=1
    MMCV_WITH_OPS=1 FORCE_CUDA=$force_cuda MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${pip[@]}" wheel --no-build-isolation --no-deps -w "$build/dist" "$build/mmcv-2.1.0"
    mkdir -p "$wheel_dir"
    # Copy then rename, so a killed build never leaves a half-written wheel in the cache.
    whl=$(basename "$build"/dist/mmcv-2.1.0-*.whl)
    cp "$build/dist/$whl" "$wheel_dir/.$whl.tmp" && mv "$wheel_dir/.$whl.tmp" "$wheel_dir/$whl"
else
    log "reusing cached mmcv wheel from $wheel_dir"
fi
"${pip[@]}" install "$wheel_dir"/mmcv-2.1.0-*.whl
"${pip[@]}" install -e "$repo[tests]"
"$venv/bin/python" -c "import deform_viz" || { log "import deform_viz failed after install"; exit 1; }
rm -f "$venv"/.deform-viz-*
touch "$stamp"
log "ready: $venv"
