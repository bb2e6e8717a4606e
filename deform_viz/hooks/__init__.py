"""Runner hooks: ``OffsetDumpHook`` records offset fields during val/test (registered in mmengine's HOOKS)."""
from .offset_dump_hook import OffsetDumpHook, add_offset_dump_hook
from .offset_figure_hook import OffsetFigureHook

__all__ = ['OffsetDumpHook', 'OffsetFigureHook', 'add_offset_dump_hook']
