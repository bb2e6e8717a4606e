"""Render dumps' figures: which figures exist, drawing a dump directory, saving reproducibly, arrays."""
import inspect
import os
import re
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..analysis.fields import LayerOffsets, dump_files, feeding_layers, layer_offsets
from ..dump import load_offset_dump
from ..fileio import write_atomically
from .figures import plot_df_divergence, plot_dk_extent, plot_kernel_point_fields, plot_sampling_locations
from .image import load_image

#: figure kind -> (function, needs the image). Kinds are the file-name suffixes too.
FIGURES: Dict[str, Tuple[Callable, bool]] = {
    'kernel_points': (plot_kernel_point_fields, False),   # Fig. 1
    'df_divergence': (plot_df_divergence, True),          # Fig. 2
    'dk_extent': (plot_dk_extent, True),                  # Fig. 3
    'sampling': (plot_sampling_locations, True),          # DCN Fig. 5/6
}
FORMATS = ('png', 'pdf')


def check_kinds(kinds: Optional[Sequence[str]]) -> Tuple[str, ...]:
    if kinds is None:
        return tuple(FIGURES)
    unknown = [k for k in kinds if k not in FIGURES]
    if unknown:
        raise ValueError(f'unknown figure kind(s) {unknown}; choose from {list(FIGURES)}')
    return tuple(kinds)


def _accepted(function) -> set:
    return set(inspect.signature(function).parameters) - {'layer', 'image', 'ax', 'below'}


def render_layer(layer: LayerOffsets, kind: str, image: Optional[np.ndarray] = None, **options) -> Figure:
    """One figure of ``kind`` (see :data:`FIGURES`) for a layer; ``image`` None = blank canvas.

    ``options`` go to the plotting function; those it does not take (e.g. ``points`` for a
    Fig. 2) are ignored, so one set of options can serve every kind.
    """
    function, uses_image = FIGURES[check_kinds([kind])[0]]
    kwargs = {k: v for k, v in options.items() if k in _accepted(function) or (k == 'below' and kind == 'sampling')}
    if uses_image:
        return function(layer, image=image, **kwargs)
    return function(layer, **kwargs)


def render_dump(dump, layers=None, kinds: Optional[Sequence[str]] = None, img_root: Optional[str] = None,
                blank: bool = False, source: str = 'used', levels: int = 1,
                **options) -> Iterator[Tuple[str, str, Figure]]:
    """Yield ``(layer name, kind, Figure)`` for the selected layers of a loaded dump.

    ``levels`` > 1 makes the sampling figure compose that many stacked deformable layers of the
    dump (the layer and the ones feeding it, see :func:`feeding_layers`), as the DCN paper's Fig. 6.

    The image is read once from the dump's ``img_path`` (or ``img_root``); a missing file raises
    :class:`~.image.ImageNotFoundError` unless ``blank``. Layers without data offsets (pure
    deformable-kernel layers) are skipped when ``layers`` is None. ``options`` are passed to the
    plotting functions that take them (an option no selected figure takes is an error).
    """
    kinds = check_kinds(kinds)
    known = set().union(*(_accepted(FIGURES[k][0]) for k in kinds))
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f'figure option(s) {unknown} are not taken by any of the figures {list(kinds)}; '
                        f'options: {sorted(known)}')
    chosen = layer_offsets(dump, layers, source=source, skip_without_offsets=layers is None)
    image = None
    if any(FIGURES[k][1] for k in kinds):
        image = load_image(dump.meta, img_root=img_root, blank=blank)
    if levels < 1:
        raise ValueError(f'levels must be at least 1, got {levels}')
    for layer in chosen:
        for kind in kinds:
            extra = {}
            if kind == 'sampling' and levels > 1:
                extra['below'] = feeding_layers(dump, layer.name, levels - 1, source)
            yield layer.name, kind, render_layer(layer, kind, image, **options, **extra)


def write_dump_figures(dump: str, out_dir: str, layers=None, kinds: Optional[Sequence[str]] = None,
                       fmt: str = 'png', image_ids: Optional[Sequence] = None, max_images: Optional[int] = None,
                       progress: bool = False, **options) -> List[str]:
    """Draw the figures of the dumps at ``dump`` (a directory or one ``.npz``) into
    ``out_dir/<image id>/<layer>.<kind>.<fmt>``, one dump in memory at a time; returns the paths.

    ``image_ids`` / ``max_images`` select dumps (see :func:`~deform_viz.analysis.dump_files`);
    ``options`` go to :func:`render_dump` (``img_root``, ``blank``, ``source``, ``levels``) and
    to the plotting functions.
    """
    check_kinds(kinds)
    if fmt not in FORMATS:
        raise ValueError(f'unsupported figure format {fmt!r}; choose from {FORMATS}')
    files = dump_files(dump, image_ids=image_ids, max_images=max_images)
    if progress:
        from tqdm import tqdm
        files = tqdm(files, desc='figures', unit='image', file=sys.stderr)
    written = []
    for path in files:
        loaded = load_offset_dump(path)
        for layer, kind, fig in render_dump(loaded, layers, kinds, **options):
            written.append(save_figure(fig, figure_path(out_dir, loaded.img_id, layer, kind, fmt), fmt))
    return written


def figure_path(out_dir: str, image_id, layer_name: str, kind: str, fmt: str = 'png') -> str:
    """``out_dir/<image id>/<layer name>.<kind>.<fmt>`` with unsafe characters replaced."""
    safe = re.sub(r'[^A-Za-z0-9._-]+', '_', layer_name)
    return os.path.join(out_dir, re.sub(r'[^A-Za-z0-9._-]+', '_', str(image_id)), f'{safe}.{kind}.{fmt}')


def save_figure(fig: Figure, path: str, fmt: Optional[str] = None) -> str:
    """Save with no time stamps or version strings, so equal figures give equal bytes."""
    fmt = fmt or os.path.splitext(path)[1].lstrip('.') or 'png'
    if fmt not in FORMATS:
        raise ValueError(f'unsupported figure format {fmt!r}; choose from {FORMATS}')
    metadata = {'Software': None} if fmt == 'png' else {'CreationDate': None, 'Producer': None, 'Creator': None}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=fig.dpi, metadata=metadata))
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render to an (H, W, 3) uint8 RGB array (for ``Visualizer.add_image``)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
