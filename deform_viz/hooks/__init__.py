"""Runner hooks (registered in mmengine's HOOKS, configured by ``custom_hooks``).

``OffsetDumpHook`` writes offset fields during val/test, ``OffsetFigureHook`` draws them into the
visualizer during validation, ``OffsetStatsHook`` logs offset statistics while training.
"""
from .hook_config import add_offset_dump_hook
from .offset_dump_hook import OffsetDumpHook
from .offset_figure_hook import OffsetFigureHook
from .offset_stats_hook import OffsetStatsHook
from .recording import LayerRecording, OffsetRecorder, describe_deformable, select_offset_layers

__all__ = [
    'OffsetDumpHook', 'OffsetFigureHook', 'OffsetStatsHook', 'add_offset_dump_hook',
    'LayerRecording', 'OffsetRecorder', 'describe_deformable', 'select_offset_layers'
]
