"""Fail at import, with the command that fixes it, when the OpenMMLab stack is missing or wrong."""
from importlib import import_module

from packaging.version import Version

FIX = 'Run `bash tools/bootstrap.sh` from the deform-viz checkout (it builds mmcv 2.1.0 with its ops).'

# (module, lowest version, first version not supported)
REQUIREMENTS = (
    ('torch', '1.13', None),
    ('mmengine', '0.10.0', '0.11.0'),
    ('mmcv', '2.0.0', '2.2.0'),
    ('mmdet', '3.3.0', '3.4.0'),
)


class DependencyError(ImportError):
    """The installed torch/mmcv/mmengine/mmdet cannot run deform-viz."""


def check_dependencies() -> None:
    for name, low, high in REQUIREMENTS:
        try:
            module = import_module(name)
        except ImportError as e:
            raise DependencyError(f'deform-viz needs {name} but it cannot be imported ({e}). {FIX}') from e
        version = Version(module.__version__.split('+')[0])
        if version < Version(low) or (high and version >= Version(high)):
            wanted = f'>={low}' + (f',<{high}' if high else '')
            raise DependencyError(
                f'deform-viz needs {name}{wanted}, found {module.__version__}. {FIX}')
    try:
        from mmcv.ops import deform_conv2d  # noqa: F401  imports the compiled mmcv._ext
    except (ImportError, ModuleNotFoundError) as e:
        raise DependencyError(
            f'mmcv is installed without its compiled ops ({e}); deform-viz needs the full mmcv '
            f'(MMCV_WITH_OPS=1), not mmcv-lite. {FIX}') from e
    check_cuda_ops()


def check_cuda_ops() -> None:
    """A GPU that torch can use needs mmcv's CUDA ops: without them every detector stops at its
    first RoIAlign or NMS on the GPU, after the model is built and the data loaded.

    Cheap and fork-safe: ``torch.cuda.is_available`` creates no CUDA context.
    """
    import torch
    from mmcv.ops import get_compiling_cuda_version

    from ._cuda_build import cpu_requested, driver_gpus
    if not torch.cuda.is_available() or cpu_requested() or get_compiling_cuda_version() != 'not available':
        return
    import mmcv
    gpus = ', '.join(driver_gpus()) or 'a CUDA GPU'
    raise DependencyError(
        f'torch sees {gpus} but mmcv {mmcv.__version__} was built with CPU-only ops: every detector would '
        f'stop at its first RoIAlign or NMS on cuda:0 ("implementation for device cuda:0 not found"). '
        f'Rebuild on this machine: `DEFORM_VIZ_CUDA=1 bash tools/bootstrap.sh` (elsewhere: with '
        f'TORCH_CUDA_ARCH_LIST naming its architecture). To run on the CPU on purpose, hide the GPUs: '
        f'CUDA_VISIBLE_DEVICES=')
