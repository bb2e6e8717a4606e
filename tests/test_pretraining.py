"""The pretrained backbone: tiny pretraining, the cache, the deform-viz:// scheme loading it into the
CPU detectors' backbone, and every way a checkpoint can be wrong."""
import json
import os.path as osp
from dataclasses import asdict

import pytest
import torch
from scipy import stats
from mmengine.config import Config

from conftest import CPU_CONFIG_DIR
from deform_viz import pretraining
from deform_viz.pretraining import (BACKBONE_NAME, PRESET_VARIABLE, PRESETS, SCHEME, PretrainSettings,
                                    checkpoint_path, load_backbone_checkpoint, pretrain_backbone)

TINY = PRESETS['tiny']
CHECKPOINT = SCHEME + BACKBONE_NAME
PLAIN_CONFIG = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16_fpn_synthetic.py')
DCN_CONFIG = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16-dconv-c3-c5_fpn_synthetic.py')
DK_CONFIG = osp.join(CPU_CONFIG_DIR, 'faster-rcnn_r50-w16-dkernel-local-s4-c3-c5_fpn_synthetic.py')


@pytest.fixture(scope='module')
def tiny_cache(tmp_path_factory):
    """A cache holding the tiny preset's checkpoint; the scheme resolves to it."""
    cache = tmp_path_factory.mktemp('cache')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('DEFORM_VIZ_CACHE', str(cache))
        patch.setenv(PRESET_VARIABLE, 'tiny')
        result = pretrain_backbone(TINY, log=lambda message: None)
        yield cache, result


@pytest.fixture
def scheme_env(tiny_cache, monkeypatch):
    cache, _ = tiny_cache
    monkeypatch.setenv('DEFORM_VIZ_CACHE', str(cache))
    monkeypatch.setenv(PRESET_VARIABLE, 'tiny')
    return cache


def build_detector(config: str):
    from mmdet.registry import MODELS
    model = MODELS.build(Config.fromfile(config).model)
    model.init_weights()
    return model


def test_tiny_pretraining_writes_the_checkpoint_and_reuses_it(tiny_cache):
    cache, result = tiny_cache
    path = checkpoint_path(TINY, cache)
    assert result['checkpoint'] == str(path) and not result['reused']
    assert path.parent.parent == cache / 'backbones' and len(path.parent.name) == 16
    assert result['chance'] == pytest.approx(0.1) and result['settings'] == json.loads(json.dumps(asdict(TINY)))
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint['meta']['command'] == 'python tools/pretrain_backbone.py --preset tiny'
    assert checkpoint['meta']['val_accuracy'] == result['val_accuracy']
    written = path.stat().st_mtime_ns
    again = pretrain_backbone(TINY, cache_dir=cache, log=lambda message: None)
    assert again['reused'] and again['val_accuracy'] == result['val_accuracy']
    assert path.stat().st_mtime_ns == written


@pytest.mark.slow
def test_a_short_pretraining_beats_chance(tmp_path):
    """The tiny preset (2 steps) is for speed: its held-out accuracy (0.25 on 16 crops) is no evidence
    of learning, so it is not compared with chance. 64 steps are (about 0.23 on 200 held-out crops of
    10 classes, varying by a few crops with the thread count): they must reach a count that chance
    reaches with probability below 1e-3 (35 of 200)."""
    settings = PretrainSettings(crop_size=32, num_train=2048, num_val=200, batch_size=32, lr=8e-3)
    result = pretrain_backbone(settings, cache_dir=tmp_path, log=lambda message: None)
    correct = round(result['val_accuracy'] * 200)
    assert result['chance'] == pytest.approx(0.1) and result['val_accuracy'] == pytest.approx(correct / 200)
    needed = next(k for k in range(201) if stats.binom.sf(k - 1, 200, 0.1) < 1e-3)
    assert needed == 35 and correct >= needed, result['val_accuracy']


@pytest.mark.parametrize('config', [PLAIN_CONFIG, DCN_CONFIG], ids=osp.basename)
def test_configs_load_it_into_the_backbone_with_no_missing_keys(scheme_env, config):
    checkpoint = torch.load(checkpoint_path(TINY, scheme_env), weights_only=True)['state_dict']
    backbone = build_detector(config).backbone.state_dict()
    assert set(checkpoint) <= set(backbone)
    extra = set(backbone) - set(checkpoint)
    assert all('.conv_offset.' in name for name in extra) and len(extra) == (2 * 13 if 'dconv' in config else 0)
    for name, value in checkpoint.items():
        assert torch.equal(backbone[name], value), name
    for name in extra:  # offset predictors stay zero: every variant starts as the pretrained ResNet
        assert not backbone[name].any(), name


def test_deformable_kernel_config_starts_as_the_pretrained_resnet(scheme_env):
    """DK layers take the 3x3 weights into their 4x4 scope, so the rigid taps sample them back."""
    checkpoint = torch.load(checkpoint_path(TINY, scheme_env), weights_only=True)['state_dict']
    backbone = build_detector(DK_CONFIG).backbone
    conv2 = backbone.layer3[1].conv2
    x = torch.randn(1, conv2.in_channels, 6, 6)
    expected = torch.nn.functional.conv2d(x, checkpoint['layer3.1.conv2.weight'], padding=1)
    torch.testing.assert_close(conv2(x), expected, rtol=1e-4, atol=1e-5)
    state = backbone.state_dict()
    for name, value in checkpoint.items():
        if not ('.conv2.' in name and name.startswith(('layer2', 'layer3', 'layer4'))):
            assert torch.equal(state[name], value), name


def test_configs_freeze_the_stem_and_first_stage_and_keep_bn_statistics(scheme_env):
    cfg = Config.fromfile(PLAIN_CONFIG)
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=CHECKPOINT)
    assert cfg.model.backbone.frozen_stages == 1 and cfg.model.backbone.norm_eval
    model = build_detector(PLAIN_CONFIG)
    model.train()
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_classifier_backbone_is_the_configs_backbone():
    """Same mmdet ResNet (depth, widths) as the CPU configs, same input normalisation."""
    cfg = Config.fromfile(PLAIN_CONFIG)
    for key in ('type', 'depth', 'num_stages', 'base_channels', 'style', 'norm_cfg'):
        assert cfg.model.backbone[key] == pretraining.BACKBONE[key], key
    preprocessor = cfg.model.data_preprocessor
    assert preprocessor.bgr_to_rgb  # the detector sees RGB, as the crops are
    assert tuple(preprocessor.mean) == pretraining.PIXEL_MEAN and tuple(preprocessor.std) == pretraining.PIXEL_STD


def test_scheme_is_registered_on_import():
    from mmengine.runner.checkpoint import CheckpointLoader
    assert CheckpointLoader._get_checkpoint_loader(CHECKPOINT) is pretraining.load_from_deform_viz


def test_missing_checkpoint_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv('DEFORM_VIZ_CACHE', str(tmp_path))
    monkeypatch.setenv(PRESET_VARIABLE, 'tiny')
    with pytest.raises(FileNotFoundError, match=r'no pretrained backbone at .*: make it with '
                       r'`python tools/pretrain_backbone.py --preset tiny`'):
        build_detector(PLAIN_CONFIG)
    monkeypatch.delenv(PRESET_VARIABLE)
    with pytest.raises(FileNotFoundError, match=r'make it with `python tools/pretrain_backbone.py`$'):
        pretraining.load_from_deform_viz(CHECKPOINT)


@pytest.fixture
def damaged(tiny_cache, tmp_path):
    """A copy of the tiny checkpoint to damage, and the checkpoint itself."""
    cache, _ = tiny_cache
    return tmp_path / 'backbone.pth', torch.load(checkpoint_path(TINY, cache), weights_only=True)


def test_corrupt_checkpoint_fails_clearly(damaged):
    path, _ = damaged
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match=r'is not a readable checkpoint .*make it with `python tools/'
                       r'pretrain_backbone.py --preset tiny`'):
        load_backbone_checkpoint(path, TINY)


def test_foreign_checkpoint_fails_clearly(damaged):
    path, checkpoint = damaged
    torch.save({'state_dict': checkpoint['state_dict']}, path)  # e.g. a plain mmengine checkpoint
    with pytest.raises(RuntimeError, match="is not a deform-viz pretrained backbone"):
        load_backbone_checkpoint(path, TINY)


def test_checkpoint_of_other_settings_fails_clearly(damaged):
    path, checkpoint = damaged
    torch.save(checkpoint, path)
    other = PretrainSettings(**{**asdict(TINY), 'seed': 1})
    with pytest.raises(RuntimeError, match=r"was made with other settings .*'seed': 0.*not .*'seed': 1.*"
                       r"`python tools/pretrain_backbone.py --crop-size 32 .* --seed 1`"):
        load_backbone_checkpoint(path, other)


def test_checkpoint_of_other_architecture_fails_clearly(damaged):
    from mmdet.registry import MODELS
    path, checkpoint = damaged
    wider = MODELS.build({**pretraining.BACKBONE, 'base_channels': 32}).state_dict()
    torch.save({**checkpoint, 'state_dict': wider}, path)
    with pytest.raises(RuntimeError, match=r'holds another architecture .*parameters differ, e.g. '
                       r"\['bn1.bias', 'bn1.running_mean'"):
        load_backbone_checkpoint(path, TINY)


def test_pretraining_remakes_a_damaged_cached_checkpoint(tiny_cache, tmp_path):
    cache, first = tiny_cache
    path = checkpoint_path(TINY, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b'truncated')
    messages = []
    result = pretrain_backbone(TINY, cache_dir=tmp_path, log=messages.append)
    assert not result['reused'] and 'remaking the cached backbone' in messages[0]
    remade = torch.load(path, weights_only=True)['state_dict']
    original = torch.load(checkpoint_path(TINY, cache), weights_only=True)['state_dict']
    assert all(torch.equal(remade[k], original[k]) for k in original)  # same seed, same weights


def test_unknown_names_and_presets_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown checkpoint 'deform-viz://resnet18': deform-viz provides "
                       r"deform-viz://resnet50-w16-shapes"):
        pretraining.load_from_deform_viz('deform-viz://resnet18')
    monkeypatch.setenv(PRESET_VARIABLE, 'huge')
    with pytest.raises(ValueError, match=r"DEFORM_VIZ_BACKBONE_PRESET='huge' is not a pretraining preset; "
                       r"choose one of \['default', 'tiny'\]"):
        pretraining.load_from_deform_viz(CHECKPOINT)


@pytest.mark.parametrize('kwargs, message', [
    (dict(crop_size=16), 'crop_size must be an integer >= 32'),
    (dict(num_train=0), 'num_train must be an integer >= 1'),
    (dict(batch_size=2.5), 'batch_size must be an integer'),
    (dict(lr=0), 'lr must be > 0'),
    (dict(weight_decay=-1.0), 'weight_decay must be a number >= 0'),
    (dict(class_texture_prob=2.0), r'class_texture_prob must be in \[0, 1\]'),
])
def test_bad_settings_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PretrainSettings(**kwargs)


def test_cache_key_follows_every_setting():
    keys = {pretraining.settings_key(PretrainSettings(**{name: value})) for name, value in
            dict(crop_size=64, num_train=7, num_val=7, batch_size=7, lr=0.3, weight_decay=0.1,
                 class_texture_prob=0.5, seed=7).items()}
    assert len(keys | {pretraining.settings_key(PRESETS['default'])}) == 9


def test_cli_reports_accuracy_and_how_configs_load_it(tiny_cache, capsys, monkeypatch):
    from conftest import import_tool
    cache, result = tiny_cache
    monkeypatch.setenv('DEFORM_VIZ_CACHE', str(cache))
    tool = import_tool('pretrain_backbone')
    assert tool.main(['--preset', 'tiny']) == 0
    out = capsys.readouterr().out
    assert f'{checkpoint_path(TINY, cache)} (reused cached checkpoint' in out
    assert f'held-out accuracy {result["val_accuracy"]:.3f} on 16 crops (chance 0.100)' in out
    assert 'configs load it as deform-viz://resnet50-w16-shapes with DEFORM_VIZ_BACKBONE_PRESET=tiny' in out
    assert tool.main(['--preset', 'tiny', '--crop-size', '8']) == 2
    assert 'crop_size must be an integer >= 32, got 8' in capsys.readouterr().err
