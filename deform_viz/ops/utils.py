"""Argument and precision helpers shared by the ops and the layers.

Precision under autocast: the ops compute *values* (input rows, columns, weights, outputs) in the
dtype autocast picks for convolutions, and *geometry* (sampling positions, bilinear weights,
masks) in at least float32. Half precision cannot hold a sampling position: bfloat16 keeps 8
significant bits, so a position near 100 moves in steps of 0.5 pixel, and float16 near 1000 in
steps of 0.5 too. Outside autocast nothing is cast and no tensor is copied.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Pair = Union[int, Sequence[int]]

_HALF = (torch.float16, torch.bfloat16)


def to_pair(value: Pair, name: str) -> Tuple[int, int]:
    """``3`` -> ``(3, 3)``; ``(3, 5)`` stays. Anything else is an error naming ``name``."""
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f'{name} must be an int or a pair of ints, got {value!r}')
    return pair


def conv_output_size(in_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int]) -> Tuple[int, int]:
    """(Ho, Wo) of a convolution with these pairs, as ``nn.Conv2d`` computes it."""
    return tuple((i + 2 * p - d * (k - 1) - 1) // s + 1
                 for i, k, s, p, d in zip(in_size, kernel_size, stride, padding, dilation))


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast runs convolutions in on ``device_type`` now; None when it is off."""
    if hasattr(torch, 'get_autocast_dtype'):  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    elif device_type == 'cpu':
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    else:
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if enabled else None


def value_tensors(x: Tensor, **others: Optional[Tensor]) -> List[Optional[Tensor]]:
    """``[x, *others]`` in the dtype the op computes values in (``others``: weights, bias).

    Under autocast on x's device: autocast's dtype for every floating tensor but float64, as
    autocast casts ``F.conv2d``'s arguments. Otherwise the tensors come back unchanged and must
    share x's dtype.
    """
    dtype = autocast_dtype(x.device.type)
    if dtype is not None:
        def cast(t):
            return t if t is None or t.dtype == torch.float64 else t.to(dtype)
        x = cast(x)
        others = {name: cast(t) for name, t in others.items()}
    for name, t in others.items():
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f'{name} has dtype {t.dtype} but the input has {x.dtype}; give them '
                             f'one dtype or run under torch.autocast')
    return [x, *others.values()]


def geometry_tensor(t: Optional[Tensor]) -> Optional[Tensor]:
    """Offsets or masks in at least float32 (half-precision ones upcast), None passes."""
    return t.float() if t is not None and t.dtype in _HALF else t
