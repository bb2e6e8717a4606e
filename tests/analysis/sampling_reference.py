"""Where taps sample the original image, point by point with scalar arithmetic: the tests' slow,
obvious reference for the stacked sampling of ``deform_viz.analysis.fields``.

It reads only a layer's raw offsets and its metadata and applies the conventions of
``deform_viz/analysis/geometry.py`` written out once more: output cell (r, c) of a layer with
conv stride ``cs = output_stride / input_stride`` and "same" padding sits on input pixel
(r * cs, c * cs); tap n = i * Kw + j sits at ((i - (Kh-1)/2) * dh, (j - (Kw-1)/2) * dw) plus its
offset (dy, dx); input pixel y is network pixel ``y * input_stride + 0.5``, mirrored by a flip
and divided by the resize.
"""
import math


def bilinear(field, y, x):
    """``field`` (H, W) at the fractional cell (y, x), clamped to the grid, one scalar."""
    h, w = field.shape
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * (1 - fx) * field[y0, x0] + (1 - fy) * fx * field[y0, x1]
            + fy * (1 - fx) * field[y1, x0] + fy * fx * field[y1, x1])


def taps_at(layer, y_cell, x_cell, group=0):
    """The taps of ``layer`` at its (fractional) output cell, in its input pixels: [(y, x), ...]."""
    g = layer.geometry
    (kh, kw), (dh, dw) = g.kernel_size, g.dilation
    cs_y, cs_x = g.output_stride[0] / g.input_stride[0], g.output_stride[1] / g.input_stride[1]
    fields = layer.fields[min(group, layer.fields.shape[0] - 1)]
    out = []
    for i in range(kh):
        for j in range(kw):
            n = i * kw + j
            dy, dx = bilinear(fields[n, 0], y_cell, x_cell), bilinear(fields[n, 1], y_cell, x_cell)
            out.append((y_cell * cs_y + (i - (kh - 1) / 2) * dh + dy, x_cell * cs_x + (j - (kw - 1) / 2) * dw + dx))
    return out


def to_image(layer, y_in, x_in):
    """A position in ``layer``'s input pixels on the original image, (y, x)."""
    g = layer.geometry
    y, x = y_in * g.input_stride[0] + 0.5, x_in * g.input_stride[1] + 0.5
    if g.flip_direction in ('vertical', 'diagonal'):
        y = g.img_shape[0] - y
    if g.flip_direction in ('horizontal', 'diagonal'):
        x = g.img_shape[1] - x
    return y / g.scale_factor[1], x / g.scale_factor[0]


def stacked_points(layers, row, col, group=0):
    """``layers`` = [top, nearest below, ...]: per level, the (y, x) image positions of the taps of
    cell (row, col) of the top, then of every earlier point's taps in the layer below (point by
    point, each point's taps in tap order)."""
    points = taps_at(layers[0], float(row), float(col), group)
    levels = [[to_image(layers[0], y, x) for y, x in points]]
    for lower in layers[1:]:
        # the upper layer's input pixels are the lower layer's output cells
        points = [tap for y, x in points for tap in taps_at(lower, y, x, group)]
        levels.append([to_image(lower, y, x) for y, x in points])
    return levels
