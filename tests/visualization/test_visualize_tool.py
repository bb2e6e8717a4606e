"""tools/visualize_offsets.py on synthetic dumps: files per image/layer/kind, filters, errors."""
import os
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, import_tool
from analysis.synthetic_dumps import scaled_kernel_field, write_dump, write_image


@pytest.fixture(scope='module')
def visualize():
    return import_tool('visualize_offsets').main


@pytest.fixture
def dumps(tmp_path):
    for img_id in (2, 10):
        image = write_image(str(tmp_path / 'images' / f'{img_id}.png'), (48, 64), seed=img_id)
        fields = scaled_kernel_field(np.linspace(0.5, 2, 6 * 8).reshape(6, 8))
        write_dump(tmp_path / 'dumps', img_id, {'backbone.layer3.0.conv2': ({}, fields),
                                                'backbone.layer4.0.conv2': ({}, fields)},
                   ori_shape=(48, 64), img_path=image)
    return tmp_path / 'dumps'


def test_tool_writes_one_file_per_image_layer_and_figure(visualize, dumps, tmp_path, capsys):
    out = tmp_path / 'figs'
    written = visualize([str(dumps), '--out', str(out), '--layer', 'layer4', '--dpi', '40',
                         '--figures', 'df_divergence', 'sampling'])
    assert sorted(os.path.relpath(p, out) for p in written) == [
        '10/backbone.layer4.0.conv2.df_divergence.png', '10/backbone.layer4.0.conv2.sampling.png',
        '2/backbone.layer4.0.conv2.df_divergence.png', '2/backbone.layer4.0.conv2.sampling.png']
    with Image.open(written[0]) as im:
        assert im.size[0] == 260 and im.size[1] > 100   # 6.5 in at 40 dpi
    assert 'wrote 4 figures of 2 image(s)' in capsys.readouterr().out

    written = visualize([str(dumps), '--out', str(out), '--image', '10', '--format', 'pdf', '--dpi', '40',
                         '--figures', 'dk_extent', '--points', '8,8'])
    assert [os.path.relpath(p, out) for p in written] == [
        '10/backbone.layer3.0.conv2.dk_extent.pdf', '10/backbone.layer4.0.conv2.dk_extent.pdf']
    assert open(written[0], 'rb').read(5) == b'%PDF-'

    # DCN Fig. 6 style: two stacked layers
    written = visualize([str(dumps), '--out', str(out / 'stack'), '--layer', 'layer4', '--image', '2',
                         '--figures', 'sampling', '--levels', '2', '--dpi', '40'])
    assert len(written) == 1 and os.path.getsize(written[0]) > 5000

    # default output folder next to the dump; --max-images
    written = visualize([str(dumps), '--max-images', '1', '--figures', 'kernel_points', '--dpi', '30'])
    assert all(p.startswith(str(dumps) + '_figures' + os.sep + '2' + os.sep) for p in written)


def test_tool_errors(visualize, dumps, tmp_path):
    from deform_viz.analysis import LayerNotFoundError, OffsetInputError
    from deform_viz.visualization import ImageNotFoundError
    with pytest.raises(LayerNotFoundError, match=r'layer7.*backbone.layer3.0.conv2'):
        visualize([str(dumps), '--layer', 'layer7'])
    with pytest.raises(OffsetInputError, match=r'no dump for image id\(s\) 99'):
        visualize([str(dumps), '--image', '99'])
    os.remove(tmp_path / 'images' / '2.png')
    with pytest.raises(ImageNotFoundError, match='--blank'):
        visualize([str(dumps), '--image', '2', '--out', str(tmp_path / 'o')])
    assert visualize([str(dumps), '--image', '2', '--blank', '--figures', 'dk_extent', '--dpi', '30',
                      '--out', str(tmp_path / 'o')])
    with pytest.raises(SystemExit):
        visualize([str(dumps), '--points', '3'])


def test_command_line_error_message(dumps, tmp_path, monkeypatch):
    """Run as a script, a bad argument ends with one readable line, not a traceback."""
    monkeypatch.setattr(sys, 'argv', ['visualize_offsets.py', str(tmp_path / 'missing')])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, 'tools', 'visualize_offsets.py'), run_name='__main__')
    message = str(exit_info.value.code)
    assert message.startswith('visualize_offsets.py: error: offset dump') and 'does not exist' in message
