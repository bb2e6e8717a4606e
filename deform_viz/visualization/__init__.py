"""Figures from offset dumps (matplotlib, no GUI needed): the "revisiting" paper's Fig. 1
(per-tap offset fields), Fig. 2 (d_f and its negative divergence), Fig. 3 (d_k extent circles)
and the DCN paper's sampling-location plots; and the figures of an analysis report
(:mod:`.report_figures`).

Notebook use::

    from deform_viz.dump import load_offset_dump
    from deform_viz.analysis import LayerOffsets
    from deform_viz.visualization import load_image, plot_df_divergence

    dump = load_offset_dump('work_dirs/offsets/139.npz')
    layer = LayerOffsets.from_dump(dump, 'backbone.layer3.0.conv2')
    plot_df_divergence(layer, load_image(dump.meta))      # a matplotlib Figure

No pyplot is involved: figures are plain ``matplotlib.figure.Figure`` objects rendered by Agg,
so nothing depends on (or changes) the matplotlib backend.

Deformable attention (Deformable DETR, DINO): :func:`plot_detection_attention` (Deformable DETR's
Fig. 6 for the top detections), :func:`plot_pixel_attention` (the encoder's points at chosen pixels),
their geometry in :mod:`.attention_points`; the figures of an attention statistics report
(:mod:`.attention_report_figures`).
"""
from .attention_figures import plot_detection_attention, plot_pixel_attention, write_attention_figures
from .attention_report_figures import (ATTENTION_REPORT_FIGURES, plot_inward_offset, plot_spread_vs_size,
                                       write_attention_report_figures)
from .attention_points import (AttentionInputError, QueryPoints, detection_points, encoder_points, pixel_points,
                               to_display)
from .figures import (PAPER_WIDTH, choose_points, layer_caption, plot_df_divergence,
                      plot_dk_extent, plot_kernel_point_fields, plot_sampling_locations)
from .image import ImageNotFoundError, image_file, load_image
from .render import (FIGURES, FORMATS, figure_path, figure_to_array, render_dump, render_layer, save_figure,
                     write_dump_figures)
from .report_figures import (REPORT_FIGURES, plot_effective_dilation, plot_extent_vs_size, plot_inward_df,
                             write_report_figures)

__all__ = [
    'AttentionInputError', 'QueryPoints', 'detection_points', 'encoder_points', 'pixel_points', 'to_display',
    'plot_detection_attention', 'plot_pixel_attention', 'write_attention_figures',
    'ATTENTION_REPORT_FIGURES', 'plot_inward_offset', 'plot_spread_vs_size', 'write_attention_report_figures',
    'FIGURES', 'FORMATS', 'ImageNotFoundError', 'PAPER_WIDTH', 'choose_points', 'figure_path', 'figure_to_array',
    'image_file', 'layer_caption', 'load_image', 'plot_df_divergence', 'plot_dk_extent', 'plot_kernel_point_fields',
    'plot_sampling_locations', 'render_dump', 'render_layer', 'save_figure', 'write_dump_figures',
    'REPORT_FIGURES', 'plot_effective_dilation', 'plot_extent_vs_size', 'plot_inward_df', 'write_report_figures',
]
