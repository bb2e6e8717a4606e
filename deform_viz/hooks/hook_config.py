"""Adding the offset hooks to an mmengine ``Config`` from a tool's command line."""
from .offset_dump_hook import OffsetDumpHook


def add_offset_dump_hook(cfg, out_dir: str, **options) -> dict:
    """Add (or update) an ``OffsetDumpHook`` in ``cfg.custom_hooks``; returns its config.

    Used by ``tools/test.py --dump-offsets DIR [--dump-options k=v ...]``. The options are checked
    here by building the hook once, so a typo fails before the model is built.
    """
    hook_cfg = dict(type='OffsetDumpHook', out_dir=str(out_dir), **options)
    try:
        OffsetDumpHook(**{k: v for k, v in hook_cfg.items() if k != 'type'})
    except TypeError as e:
        raise ValueError(f'bad --dump-options: {e}') from None
    hooks = list(cfg.get('custom_hooks', None) or [])
    for index, hook in enumerate(hooks):
        if hook.get('type') in ('OffsetDumpHook', OffsetDumpHook):
            hooks[index] = hook_cfg  # the command line wins over the config's own dump hook
            break
    else:
        hooks.append(hook_cfg)
    cfg.custom_hooks = hooks
    return hook_cfg
