"""Import-time behaviour: registration and dependency errors that say what to run."""
import os
import subprocess
import sys

import pytest
from mmengine.config import Config
from mmengine.registry import HOOKS, MODELS

import deform_viz
from deform_viz.config_check import check_config, deformable_conv_types


def test_import_registers_layers_and_hooks():
    for name in ('DecomposedDCN', 'DFOnlyDCN', 'DKOnlyDCN', 'DeformableKernel', 'DK'):
        assert name in MODELS.module_dict, name
    assert 'OffsetDumpHook' in HOOKS.module_dict
    assert deform_viz.__version__


def test_mmcv_without_ops_fails_with_the_fix():
    """Fault injection: make the compiled extension unimportable, as in mmcv-lite."""
    code = "import sys; sys.modules['mmcv._ext'] = None; import deform_viz"
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode != 0
    assert 'mmcv is installed without its compiled ops' in result.stderr
    assert 'bash tools/bootstrap.sh' in result.stderr


@pytest.mark.parametrize('hidden', [False, True], ids=['gpu', 'gpus-hidden'])
def test_cpu_only_mmcv_ops_on_a_gpu_machine_fail_at_import(hidden):
    """mmcv made to report CPU-only ops, torch a GPU. Hiding the GPUs on purpose
    (CUDA_VISIBLE_DEVICES=) is the way to run on CPU there."""
    code = ("import torch, mmcv.ops; torch.cuda.is_available = lambda: True; "
            "mmcv.ops.get_compiling_cuda_version = lambda: 'not available'; import deform_viz")
    env = dict(os.environ)
    env.pop('CUDA_VISIBLE_DEVICES', None)
    if hidden:
        env['CUDA_VISIBLE_DEVICES'] = ''
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
    if hidden:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    assert ('but mmcv 2.1.0 was built with CPU-only ops: every detector would stop at its first RoIAlign'
            in result.stderr)
    assert 'DEFORM_VIZ_CUDA=1 bash tools/bootstrap.sh' in result.stderr
    assert 'CUDA_VISIBLE_DEVICES=' in result.stderr


def _resnet_cfg(**backbone):
    return Config(dict(model=dict(backbone=dict(type='ResNet', depth=50, **backbone))))


def test_deformable_conv_types_are_mmcvs_and_ours():
    assert deformable_conv_types() == ['DCN', 'DCNv2', 'DFOnlyDCN', 'DK', 'DKOnlyDCN', 'DecomposedDCN',
                                       'DeformableKernel']


def test_config_check_names_unknown_layer_and_known_ones():
    with pytest.raises(KeyError, match=r"DFOnlyDCNN.*known types:.*DFOnlyDCN"):
        check_config(_resnet_cfg(dcn=dict(type='DFOnlyDCNN'), stage_with_dcn=(False, True, True, True)))


def test_config_check_stage_with_dcn_length():
    with pytest.raises(ValueError, match=r'has 3 entries but the backbone has num_stages=4'):
        check_config(_resnet_cfg(dcn=dict(type='DCN'), stage_with_dcn=(True, True, True)))
    check_config(_resnet_cfg(dcn=dict(type='DKOnlyDCN'), stage_with_dcn=(False, True, True, True)))
    check_config(_resnet_cfg())  # no dcn: nothing to check
