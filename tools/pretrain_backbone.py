"""Pretrain the CPU detectors' backbone as a shape classifier, or reuse the cached checkpoint.

    python tools/pretrain_backbone.py [--preset default|tiny] [--crop-size S] [--num-train N] ...
                                      [--cache-dir DIR] [--force]

The checkpoint goes to ``$DEFORM_VIZ_CACHE/backbones/<key of the settings>/backbone.pth``
(default cache ``~/.cache/deform-viz``); the default preset is what the configs' backbone
``init_cfg`` (``deform-viz://resnet50-w16-shapes``) loads. Prints the held-out accuracy and wall time.
"""
import argparse
import dataclasses
import sys
import time

import deform_viz  # noqa: F401  checks the OpenMMLab stack
from deform_viz.pretraining import BACKBONE_NAME, PRESETS, SCHEME, PretrainSettings, pretrain_backbone


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Pretrain the CPU configs\' ResNet on rendered shape crops '
                                     '(reuses the cached checkpoint of the same settings)')
    parser.add_argument('--preset', choices=sorted(PRESETS), default='default',
                        help='settings to start from (default: default; tiny takes seconds, for tests)')
    for field in dataclasses.fields(PretrainSettings):
        parser.add_argument(f'--{field.name.replace("_", "-")}', type=field.type, metavar=field.name.upper(),
                            help=f'{field.metadata["help"]} '
                            f'(default preset: {getattr(PRESETS["default"], field.name)})')
    parser.add_argument('--cache-dir', help='cache root instead of $DEFORM_VIZ_CACHE or ~/.cache/deform-viz')
    parser.add_argument('--force', action='store_true', help='train even if a valid cached checkpoint exists')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = {field.name: getattr(args, field.name) for field in dataclasses.fields(PretrainSettings)
                 if getattr(args, field.name) is not None}
    try:
        settings = dataclasses.replace(PRESETS[args.preset], **overrides)
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = pretrain_backbone(settings, cache_dir=args.cache_dir, force=args.force)
    action = 'reused cached checkpoint' if result['reused'] else f'trained in {result["train_seconds"]:.0f} s'
    print(f'{result["checkpoint"]} ({action}; {time.perf_counter() - start:.0f} s wall)')
    print(f'held-out accuracy {result["val_accuracy"]:.3f} on {settings.num_val} crops '
          f'(chance {result["chance"]:.3f}); {result["crops_per_second"]:.0f} training crops/s')
    preset = next((name for name, preset in PRESETS.items() if preset == settings), None)
    if preset is not None and args.cache_dir is None:
        selector = '' if preset == 'default' else f' with DEFORM_VIZ_BACKBONE_PRESET={preset}'
        print(f'configs load it as {SCHEME}{BACKBONE_NAME}{selector}')
    else:
        print(f'load it with model.backbone.init_cfg.checkpoint={result["checkpoint"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
