"""The one vocabulary for deformable-conv variants and offset components.

Every part of the package names things with these: the layers (``component=``, ``.variant``),
the dump files, the paper tables, the result collector, the benchmarks and the experiments.

Offset components (what part of the predicted offsets a DCN samples with)::

    'full'  the offsets as predicted
    'd_f'   the mean offset over the kernel taps ("revisiting" Eq. 2), the same for every tap
    'd_k'   offset - d_f (Eq. 3), the kernel's shape without its shift

Variant keys, in the grammar of the config names (``r50-dconv-df-c3-c5`` is ``'dcn-df'``)::

    'baseline'                       rigid 3x3 conv
    'dcn', 'dcn-df', 'dcn-dk'        DCN v1 sampling with the full, d_f or d_k offsets
    'dcnv2', 'dcnv2-df', 'dcnv2-dk'  the same with DCNv2 (modulated)
    'dkernel-local-s4'               Deformable Kernels, local, scope 4 ('dkernel-global-s4': global)
    'dcn-dkernel-local-s4'           DCN + Deformable Kernels (DK paper Eq. 11)
    'dcn@test-df', 'dcn@test-dk'     a trained full DCN evaluated with its offsets projected
    'dcn-static'                     control: a DCN whose offset predictors learn only their biases

"dk" alone never names Deformable Kernels: those are "dkernel".
Names written by earlier versions (``component='df'``, layer variants ``'dcn_df'``, ``'dk_local'``)
are read through :func:`component_name` and :func:`variant_name`.
"""
from typing import Optional, Sequence, Union

COMPONENTS = ('full', 'd_f', 'd_k')
_LEGACY_COMPONENTS = {'df': 'd_f', 'dk': 'd_k'}
# the component as it appears in variant keys and config names
_COMPONENT_SUFFIX = {'full': '', 'd_f': '-df', 'd_k': '-dk'}

DCN_TYPES = {  # registered conv type -> (modulated, component), None: from the config's keys
    'DCN': (False, 'full'), 'DeformConv2dPack': (False, 'full'),
    'DCNv2': (True, 'full'), 'ModulatedDeformConv2dPack': (True, 'full'),
    'DecomposedDCN': None, 'DFOnlyDCN': (None, 'd_f'), 'DKOnlyDCN': (None, 'd_k'),
}
DKERNEL_TYPES = ('DeformableKernel', 'DK')

LABELS = {
    'baseline': 'baseline (rigid 3x3)',
    'dcn': 'full DCN (d_f + d_k)',
    'dcn-df': 'd_f only',
    'dcn-dk': 'd_k only',
    'dcnv2': 'full DCNv2 (d_f + d_k)',
    'dcnv2-df': 'DCNv2, d_f only',
    'dcnv2-dk': 'DCNv2, d_k only',
    'dkernel-global-s4': 'global DK, scope 4',
    'dkernel-local-s4': 'local DK, scope 4',
    'dcn-dkernel-local-s4': 'DCN + local DK, scope 4',
    'dcn-static': 'DCN, static offsets (predictor weights frozen)',
    'dcn@test-df': 'DCN trained, d_f at test',
    'dcn@test-dk': 'DCN trained, d_k at test',
}

_LEGACY_VARIANTS = {'dcn_df': 'dcn-df', 'dcn_dk': 'dcn-dk', 'dcnv2_df': 'dcnv2-df',
                    'dcnv2_dk': 'dcnv2-dk'}


def component_name(name: str) -> str:
    """The canonical component for ``name`` (``'df'`` -> ``'d_f'``); unknown names are an error."""
    name = _LEGACY_COMPONENTS.get(name, name)
    if name not in COMPONENTS:
        raise ValueError(f'unknown offset component {name!r}; expected one of {COMPONENTS}')
    return name


def _scope_text(scope: Union[int, Sequence[int]]) -> str:
    if isinstance(scope, int):
        return str(scope)
    scope = tuple(int(s) for s in scope)
    return str(scope[0]) if len(set(scope)) == 1 else 'x'.join(map(str, scope))


def dcn_variant(modulated: bool = False, component: str = 'full') -> str:
    """``'dcn'``, ``'dcn-df'``, ... ``'dcnv2-dk'``."""
    return ('dcnv2' if modulated else 'dcn') + _COMPONENT_SUFFIX[component_name(component)]


def dkernel_variant(mode: str, scope: Union[int, Sequence[int]], deform_data: bool = False) -> str:
    """``'dkernel-local-s4'``, ``'dkernel-global-s4'``, ``'dcn-dkernel-local-s4'``."""
    return ('dcn-' if deform_data else '') + f'dkernel-{mode}-s{_scope_text(scope)}'


def projected_variant(trained: str, component: str) -> str:
    """A trained full-DCN variant evaluated with one component: ``('dcn', 'd_f')`` -> ``'dcn@test-df'``."""
    return f'{trained}@test{_COMPONENT_SUFFIX[component_name(component)]}'


def variant_of_conv_cfg(dcn: Optional[dict], kernel_size: int = 3) -> str:
    """The variant a backbone's ``dcn=`` config builds (None or ``{}``: ``'baseline'``).

    Unregistered types come back as their type name, so a table can still show them.
    """
    if not dcn:
        return 'baseline'
    kind = dcn.get('type', '?')
    if kind in DKERNEL_TYPES:
        scope = dcn.get('scope') or kernel_size
        return dkernel_variant(dcn.get('mode', 'local'), scope, bool(dcn.get('deform_data')))
    if kind not in DCN_TYPES:
        return str(kind)
    modulated, component = DCN_TYPES[kind] or (None, dcn.get('component') or 'full')
    if modulated is None:
        modulated = bool(dcn.get('modulated', False))
    return dcn_variant(modulated, component)


def variant_name(name: str) -> str:
    """The current key for a variant name written by an earlier version (``'dcn_df'`` -> ``'dcn-df'``)."""
    return _LEGACY_VARIANTS.get(name, name)

