# Sourced by tools/dist_*.sh and tools/slurm_*.sh: PYTHON becomes the interpreter that runs the
# launcher and every rank. The checkout's .venv (tools/bootstrap.sh) unless DEFORM_VIZ_PYTHON names
# another; never whatever python or torchrun comes first on PATH, which may lack the package.
if [[ -n ${DEFORM_VIZ_PYTHON:-} ]]; then
    PYTHON=$DEFORM_VIZ_PYTHON
else
    PYTHON="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
fi
if [[ ! -x $PYTHON ]] && ! command -v "$PYTHON" >/dev/null; then
    echo "$(basename "$0"): no interpreter at $PYTHON: run bash tools/bootstrap.sh, or set DEFORM_VIZ_PYTHON" \
         "to the python that has deform-viz installed" >&2
    exit 1
fi
