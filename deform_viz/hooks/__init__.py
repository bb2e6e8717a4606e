"""Runner hooks: ``OffsetDumpHook`` records offset fields during val/test (registered in mmengine's HOOKS)."""
from .offset_dump_hook import OffsetDumpHook, add_offset_dump_hook

__all__ = ['OffsetDumpHook', 'add_offset_dump_hook']
