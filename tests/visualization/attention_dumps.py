"""Real attention dumps for the figure and browser tests (a helper module, not a conftest):
tools/test.py --dump-offsets on the tiny Deformable DETR and DINO of tests/attention/tiny_detr.py
(mmdet's models, perturbed so that every query samples somewhere of its own), on the generated
dataset resized to 136 px (scale factor 0.85), optionally with every test image flipped."""
import os.path as osp
import sys

import torch

from conftest import REPO, import_tool, synthetic_config
from deform_viz.engine import set_image_scale

sys.path.insert(0, osp.join(REPO, 'tests', 'attention'))
from tiny_detr import build_tiny, tiny_config  # noqa: E402

IMAGE_SCALE = (136, 136)
_made = {}


def attention_dump(kind: str, data_root: str, root, flip: str = None, images: int = 2, options=()) -> str:
    """The dump directory of ``images`` val images of the tiny ``kind`` model ('plain', 'dino', ...),
    made once per session; ``flip`` ('horizontal', 'vertical', 'diagonal') flips every test image;
    ``options`` go to --dump-options (key=value strings)."""
    key = (kind, data_root, flip, images, tuple(options))
    if key in _made:
        return _made[key]
    name = f'{kind}-{flip or "noflip"}-{images}-{len(_made)}'
    work = osp.join(str(root), name)
    checkpoint = work + '.pth'
    torch.save({'state_dict': build_tiny(kind).state_dict(), 'meta': {}}, checkpoint)
    cfg = synthetic_config(tiny_config(kind), data_root, work,
                           {'test_dataloader.dataset.indices': images, 'test_dataloader.batch_size': 2,
                            'model.backbone.init_cfg': None})
    set_image_scale(cfg, IMAGE_SCALE, splits=('val', 'test'))
    if flip:
        pipeline = cfg.test_dataloader.dataset.pipeline
        pack = pipeline[-1]
        assert pack['type'] == 'PackDetInputs'
        pack['meta_keys'] = tuple(pack['meta_keys']) + ('flip', 'flip_direction')
        pipeline.insert(len(pipeline) - 1, dict(type='RandomFlip', prob=1.0, direction=flip))
    config = work + '.py'
    cfg.dump(config)
    dump_dir = osp.join(work, 'dumps')
    argv = [config, checkpoint, '--work-dir', work, '--dump-offsets', dump_dir]
    if options:
        argv += ['--dump-options', *options]
    import_tool('test').main(argv)
    _made[key] = dump_dir
    return dump_dir
