"""Hand-built offset fields with known geometry, written as real dumps, plus matching COCO files.

Conventions of the helpers: grids are (H, W) output cells, offsets in input-map pixels, and a
layer with input stride ``s_in`` and conv stride 1 has its cell (r, c) centred on image pixel
``(s_in * r, s_in * c)`` (continuous coordinates ``s_in * r + 0.5``) when the image is not resized.
"""
import json
import os

import numpy as np
import torch

from deform_viz.dump import write_offset_dump
from deform_viz.ops import offset_fields as of


def rigid(kernel_size=3, dilation=1) -> np.ndarray:
    """(K*K, 2) rigid tap positions (y, x) around the centre, input pixels."""
    return of.rigid_grid(kernel_size, dilation).double().numpy()


def scaled_kernel_field(scale: np.ndarray, kernel_size=3, dilation=1) -> np.ndarray:
    """Offsets that scale each location's kernel by ``scale[r, c]``: (1, K*K, 2, H, W)."""
    grid = rigid(kernel_size, dilation)
    return ((scale[None, None] - 1) * grid[:, :, None, None])[None].astype(np.float32)


def same_for_all_taps(d_f: np.ndarray, kernel_size=3) -> np.ndarray:
    """Offsets whose every tap equals ``d_f`` (2, H, W), so d_k = 0: (1, K*K, 2, H, W)."""
    return np.repeat(d_f[None, None], kernel_size * kernel_size, axis=1).astype(np.float32)


def layer_info(shape, kernel_size=3, dilation=1, s_in=8, s_out=8, groups=1, variant='dcn',
               components=('offset',)) -> dict:
    return dict(type='DeformConv2dPack', variant=variant, kernel_size=[kernel_size, kernel_size],
                stride=[s_out // s_in] * 2, padding=[dilation, dilation], dilation=[dilation, dilation],
                deform_groups=groups, input_stride=s_in, output_stride=s_out, shape=list(shape),
                components=list(components))


def write_dump(directory, img_id, layers: dict, ori_shape, img_shape=None, img_path=None, flip=False,
               flip_direction='horizontal', derived=True, dtype=np.float32) -> str:
    """Write ``<directory>/<img_id>.npz``; ``layers``: name -> (info kwargs dict, offset array).

    With ``derived`` the dump also stores d_f and divergence computed by deform_viz.ops, as
    OffsetDumpHook does.
    """
    img_shape = img_shape or ori_shape
    meta = dict(img_id=img_id, img_path=img_path or os.path.join(str(directory), 'images', f'{img_id}.png'),
                ori_shape=list(ori_shape), img_shape=list(img_shape), pad_shape=list(img_shape),
                batch_input_shape=list(img_shape),
                scale_factor=[img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0]],
                flip=flip, flip_direction=flip_direction if flip else None, dtype='float32', layers={})
    arrays = {}
    for name, (kwargs, offset) in layers.items():
        components = ['offset'] + (['d_f', 'divergence'] if derived else [])
        info = layer_info(offset.shape[-2:], components=components, groups=offset.shape[0], **kwargs)
        meta['layers'][name] = info
        arrays[f'{name}/offset'] = offset.astype(dtype)
        if derived:
            d_f = of.offset_df(torch.from_numpy(offset.astype(np.float64)))
            arrays[f'{name}/d_f'] = d_f.numpy().astype(dtype)
            arrays[f'{name}/divergence'] = of.divergence(d_f).numpy().astype(dtype)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(str(directory), f'{img_id}.npz')
    write_offset_dump(path, meta, arrays)
    return path


def write_image(path, shape, seed=0):
    """A deterministic RGB PNG of ``shape`` (h, w)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 128)], -1)
    noise = rng.integers(0, 30, size=(h, w, 3))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)
    return path


def write_rotated_jpeg(path) -> np.ndarray:
    """A JPEG stored 96 high and 64 wide with EXIF orientation 6 (shown turned 90 degrees clockwise,
    as mmcv and browsers read it); returns the 64 x 96 picture it shows: red, green (top), blue,
    yellow (bottom) quadrants."""
    from PIL import Image
    upright = np.zeros((64, 96, 3), np.uint8)
    upright[:32, :48], upright[:32, 48:], upright[32:, :48], upright[32:, 48:] = \
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)   # undone by orientation 6
    assert stored.size == (64, 96)
    exif = Image.Exif()
    exif[0x0112] = 6
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    stored.save(path, quality=95, exif=exif)
    return upright


def write_coco(path, images, annotations) -> str:
    """images: [(id, file_name, h, w)]; annotations: [dict(image_id, bbox[, segmentation, iscrowd])]."""
    anns = []
    for i, ann in enumerate(annotations, 1):
        x, y, w, h = ann['bbox']
        anns.append(dict(id=i, image_id=ann['image_id'], category_id=1, bbox=[x, y, w, h], area=w * h,
                         iscrowd=ann.get('iscrowd', 0), segmentation=ann.get('segmentation', [])))
    data = dict(images=[dict(id=i, file_name=f, height=h, width=w) for i, f, h, w in images],
                annotations=anns, categories=[dict(id=1, name='thing')])
    with open(path, 'w') as f:
        json.dump(data, f)
    return str(path)
