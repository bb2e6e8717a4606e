"""The mechanism probe on a tiny setting: features, paired variants, the pairing check, resume."""
import json
import os.path as osp
import shutil

import pytest
import torch
from conftest import import_tool
from mmcv import imread
from mmdet.structures import DetDataSample
from mmengine.dataset import pseudo_collate

from deform_viz.datasets import make_synthetic_coco
from deform_viz.experiments import PairingError
from deform_viz.experiments import probe
from deform_viz.experiments.probe import (REFERENCE, VARIANT_CONVS, ProbeSettings, batch_order, feature_backbone,
                                          load_split, paired_model, reference_state, run_path, run_probe,
                                          train_probe)
from deform_viz.ops.kernel_sampling import scope_from_kernel
from deform_viz.variants import variant_of_conv_cfg

# the backbone weights are the configs' (deform-viz://resnet50-w16-shapes): conftest_pretrained's tiny preset
TINY = dict(num_train=8, num_val=4, image_size=64, num_layers=1, channels=32, iters=20, batch_size=4, lr=0.05,
            dataset=dict(max_objects=3))  # 20 steps: the heads detect some boxes, so every metric moves


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('probe_data'))
    make_synthetic_coco(root, **ProbeSettings(**TINY).dataset_args())
    return root


@pytest.fixture(scope='module')
def splits(data_root, tmp_path_factory):
    settings = ProbeSettings(**TINY)
    backbone, preprocessor, description = feature_backbone(settings)
    cache = str(tmp_path_factory.mktemp('probe_cache'))
    return {split: load_split(data_root, split, backbone, preprocessor, description, cache)
            for split in ('train', 'val')}


@pytest.fixture(scope='module')
def tiny_run(data_root, tmp_path_factory):
    """The tool run once: 2 seeds x baseline, d_f only, full DCN."""
    work_dir = str(tmp_path_factory.mktemp('probe_work'))
    argv = ['--work-dir', work_dir, '--data-root', data_root, '--cache-dir', osp.join(work_dir, 'cache'),
            '--seeds', '0', '1', '--variants', 'baseline', 'dcn-df', 'dcn', '--num-train', '8', '--num-val', '4',
            '--image-size', '64', '--num-layers', '1', '--channels', '32', '--iters', '20', '--batch-size', '4',
            '--lr', '0.05', '--dataset', 'max_objects=3']
    assert import_tool('probe_offsets').main(argv) == 0
    settings = ProbeSettings(**dict(TINY, seeds=(0, 1), variants=('baseline', 'dcn-df', 'dcn')))
    with open(osp.join(work_dir, 'probe.json')) as f:
        return work_dir, json.load(f), settings


def test_variant_keys_name_the_layers_they_build():
    for key, conv in VARIANT_CONVS.items():
        assert variant_of_conv_cfg(conv) == key


def test_features_are_the_backbones_c3_and_are_cached(splits, data_root, tmp_path):
    train = splits['train']
    settings = ProbeSettings(**TINY)
    backbone, preprocessor, description = feature_backbone(settings)
    assert description['weights'] == 'deform-viz://resnet50-w16-shapes'
    random = feature_backbone(ProbeSettings(**dict(TINY, backbone_weights='random')))[2]
    assert random['weights'] == 'random (mmdet init, seed 0)'
    assert random['weights_sha256'] != description['weights_sha256']
    assert tuple(train.features.shape) == (8, 128, 8, 8) and train.features.dtype == torch.float16
    assert [m['img_id'] for m in train.metainfo] == list(range(1, 9))
    assert train.metainfo[0]['img_shape'] == (64, 64) and train.metainfo[0]['scale_factor'] == (1.0, 1.0)
    with open(train.ann_file) as f:
        coco = json.load(f)
    first = [a for a in coco['annotations'] if a['image_id'] == 1]
    x, y, w, h = first[0]['bbox']
    assert train.gt_instances[0].bboxes[0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert len(train.gt_instances[0]) == len(first)

    image = torch.from_numpy(imread(osp.join(data_root, 'train', '000001.png'))).permute(2, 0, 1)
    batch = preprocessor(pseudo_collate([dict(inputs=image, data_samples=DetDataSample())]))
    with torch.no_grad():
        expected = backbone(batch['inputs'])[-1][0]
    torch.testing.assert_close(train.features[0].float(), expected, atol=2e-3, rtol=2e-3)

    class Unused(torch.nn.Module):
        def forward(self, x):
            raise AssertionError('the cached features should have been read')
    fresh = load_split(data_root, 'train', backbone, preprocessor, description, str(tmp_path))  # computes
    again = load_split(data_root, 'train', Unused(), preprocessor, description, str(tmp_path))  # reads
    assert torch.equal(fresh.features, again.features) and torch.equal(fresh.features, train.features)


def test_every_variant_starts_as_the_baseline(splits):
    settings = ProbeSettings(**TINY)
    train = splits['train']
    state = reference_state(settings, seed=3, in_channels=128)
    features, gts, metas = train.features[:4].float(), train.gt_instances[:4], train.metainfo[:4]
    losses = {}
    for variant in VARIANT_CONVS:
        model = paired_model(variant, state, settings, in_channels=128)
        offsets = [p for name, p in model.named_parameters() if 'conv_offset' in name]
        assert all(torch.count_nonzero(p) == 0 for p in offsets) and (variant == REFERENCE) == (not offsets)
        losses[variant] = sum(model.loss(features, gts, metas).values()).item()
    dk = paired_model('dkernel-local-s4', state, settings, in_channels=128)
    torch.testing.assert_close(dk.layers[0].conv.weight, scope_from_kernel(state['layers.0.conv.weight'], 4))
    for variant, loss in losses.items():
        assert loss == pytest.approx(losses[REFERENCE], rel=1e-6), variant
    other_seed = reference_state(settings, seed=4, in_channels=128)
    assert not torch.equal(other_seed['head.conv_cls.weight'], state['head.conv_cls.weight'])


def test_batch_order_is_the_seeds_permutations():
    order = batch_order(num_images=4, iters=3, batch_size=2, seed=0)
    assert order.shape == (3, 2)
    assert sorted(order[:2].flatten().tolist()) == [0, 1, 2, 3]
    assert torch.equal(order, batch_order(4, 3, 2, seed=0))
    assert not torch.equal(order, batch_order(4, 3, 2, seed=1))


def test_an_unpaired_first_step_stops_training(splits):
    settings = ProbeSettings(**dict(TINY, iters=1))
    baseline = paired_model(REFERENCE, reference_state(settings, 0, 128), settings, 128)
    first = train_probe(baseline, splits['train'], settings, seed=0)['first_loss']
    unpaired = paired_model('dcn', reference_state(settings, 1, 128), settings, 128)  # another seed's weights
    before = {k: v.clone() for k, v in unpaired.state_dict().items()}
    with pytest.raises(PairingError, match=r"rows 'baseline' and 'dcn' are not paired"):
        train_probe(unpaired, splits['train'], settings, seed=0, paired_first_losses={REFERENCE: first})
    assert all(torch.equal(before[k], v) for k, v in unpaired.state_dict().items())  # no step was taken


def test_tiny_probe_end_to_end(tiny_run):
    work_dir, report, settings = tiny_run
    assert report['command'].startswith('python tools/probe_offsets.py --work-dir ')
    assert report['wall_seconds'] > 0 and report['pairing']['check'] == 'passed'
    runs = {(r['seed'], r['variant']): r for r in report['runs']}
    assert set(runs) == {(s, v) for s in (0, 1) for v in ('baseline', 'dcn-df', 'dcn')}
    for seed in (0, 1):
        first = report['pairing']['first_losses'][str(seed)]
        assert first['dcn'] == pytest.approx(first['baseline'], rel=1e-6)
        assert first['dcn-df'] == pytest.approx(first['baseline'], rel=1e-6)
    assert report['pairing']['first_losses']['0']['baseline'] != report['pairing']['first_losses']['1']['baseline']
    assert all(runs[s, 'baseline']['metrics']['bbox_mean_best_iou'] > 0.1 for s in (0, 1))
    assert runs[0, 'dcn']['metrics'] != runs[0, 'baseline']['metrics']  # the learned offsets changed the boxes
    for metric in probe.METRICS:
        entry = report['metrics'][metric]['dcn']
        expected = [runs[s, 'dcn']['metrics'][metric] - runs[s, 'baseline']['metrics'][metric] for s in (0, 1)]
        assert entry['vs_reference']['differences'] == pytest.approx(expected)
        assert entry['per_seed'] == {str(s): runs[s, 'dcn']['metrics'][metric] for s in (0, 1)}
    assert runs[0, 'baseline']['offsets'] is None
    layers = runs[0, 'dcn']['offsets']['layers']
    assert list(layers) == ['layers.0.conv'] and layers['layers.0.conv']['num_images'] == 4
    assert report['claims']['dk_carries_the_gain']['verdict'] == 'not run'  # no d_k-only variant ran
    assert set(report['claims']['df_converges']) == {'dcn-df', 'dcn'}
    with open(osp.join(work_dir, 'probe.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_resume_reuses_finished_runs(tiny_run, data_root, monkeypatch):
    work_dir, report, settings = tiny_run
    calls, real = [], probe.train_probe

    def counted(model, *args, **kwargs):
        calls.append(model.variant)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(probe, 'train_probe', counted)
    monkeypatch.chdir(osp.dirname(data_root))  # the tool's default data root is relative
    again = run_probe(settings, work_dir, osp.basename(data_root), cache_dir=osp.join(work_dir, 'cache'))
    assert calls == [] and again['runs'] == report['runs']

    redo = run_path(work_dir, 1, 'baseline')
    with open(redo) as f:
        stored = json.load(f)
    probe.os.remove(redo)
    again = run_probe(settings, work_dir, data_root, cache_dir=osp.join(work_dir, 'cache'))
    assert calls == ['baseline']
    with open(redo) as f:
        assert json.load(f)['metrics'] == stored['metrics']  # the same paired run, deterministic


def test_report_refuses_unpaired_runs(tiny_run, data_root, tmp_path):
    work_dir, _, settings = tiny_run
    copy = str(tmp_path / 'work')
    shutil.copytree(work_dir, copy)
    path = run_path(copy, 0, 'dcn')
    with open(path) as f:
        run = json.load(f)
    run['first_loss'] *= 1.01
    with open(path, 'w') as f:
        json.dump(run, f)
    with open(osp.join(copy, 'probe.json')) as f:
        before = f.read()
    with pytest.raises(PairingError, match=r"rows 'baseline' and 'dcn' are not paired"):
        run_probe(settings, copy, data_root, cache_dir=osp.join(work_dir, 'cache'))
    with open(osp.join(copy, 'probe.json')) as f:
        assert f.read() == before  # the refused report was not written


def test_a_work_dir_of_other_settings_or_features_is_refused(tiny_run, data_root, tmp_path):
    work_dir, _, settings = tiny_run
    other = ProbeSettings(**dict(TINY, seeds=(0, 1), variants=('baseline', 'dcn'), iters=3))  # iters 20 stored
    with pytest.raises(ValueError, match=r'holds probe runs made with other settings \(iters\)'):
        run_probe(other, work_dir, data_root)
    copy = str(tmp_path / 'work')  # the same settings, but features of other weights or data
    shutil.copytree(work_dir, copy)
    with open(osp.join(copy, 'features.json'), 'w') as f:
        json.dump({'train': 'features of another backbone', 'val': 'features of another backbone'}, f)
    with pytest.raises(ValueError, match=r'holds probe runs made with other features \(train, val\)'):
        run_probe(settings, copy, data_root, cache_dir=osp.join(work_dir, 'cache'))


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="must include 'baseline'"):
        ProbeSettings(variants=('dcn',))
    with pytest.raises(ValueError, match=r"unknown probe variants \['dcnv3'\]"):
        ProbeSettings(variants=('baseline', 'dcnv3'))
    with pytest.raises(ValueError, match='image_size must be a multiple of 32'):
        ProbeSettings(image_size=100)
    with pytest.raises(ValueError, match='channels must be a multiple of 32'):
        ProbeSettings(channels=48)
    with pytest.raises(ValueError, match='seeds must be distinct'):
        ProbeSettings(seeds=(0, 0))
    with pytest.raises(FileNotFoundError, match="backbone weights 'nowhere.pth' are neither"):
        ProbeSettings(backbone_weights='nowhere.pth')


def test_backbone_weights_from_a_checkpoint(tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    cfg = Config.fromfile(probe.DETECTOR_CONFIG).model.backbone
    cfg.init_cfg = None
    full = MODELS.build(cfg)  # four stages: the later ones are ignored
    path = str(tmp_path / 'backbone.pth')
    torch.save({'state_dict': full.state_dict()}, path)
    backbone, _, description = feature_backbone(ProbeSettings(**dict(TINY, backbone_weights=path)))
    torch.testing.assert_close(backbone.conv1.weight, full.conv1.weight)
    torch.testing.assert_close(backbone.layer2[0].conv2.weight, full.layer2[0].conv2.weight)
    assert description['weights'] == path
    torch.save({'state_dict': {k: v for k, v in full.state_dict().items() if not k.startswith('layer2.')}}, path)
    with pytest.raises(ValueError, match=r"lacks \d+ tensors of the stem-to-c3 backbone, e.g. \['layer2"):
        feature_backbone(ProbeSettings(**dict(TINY, backbone_weights=path)))
