"""The verdicts on the paper's three claims, by the rules fixed in ``docs/results/PLAN.md``.

Each verdict is 'reproduced', 'contradicted' or 'unresolved' (or 'not run'), returned with the
numbers it was decided on.
"""
import math
from typing import Mapping

from .paired import paired_difference

Values = Mapping[str, Mapping[int, float]]  # row -> seed -> metric


def claim_dk_carries_the_gain(values: Values, d_f: str = 'dcn-df', d_k: str = 'dcn-dk',
                              full: str = 'dcn', reference: str = 'baseline') -> dict:
    """Claim 1: reproduced when ``d_k - d_f`` and ``d_k - reference`` are both resolved and
    positive; contradicted when ``d_f - d_k`` is; else unresolved. ``full - d_k`` is reported."""
    needed = [reference, d_f, d_k]
    if not set(needed) <= set(values):
        return {'verdict': 'not run', 'needs': needed}
    dk_vs_df = paired_difference(values, d_k, d_f)
    dk_vs_reference = paired_difference(values, d_k, reference)
    if dk_vs_df.verdict == 'higher' and dk_vs_reference.verdict == 'higher':
        verdict = 'reproduced'
    elif dk_vs_df.verdict == 'lower':
        verdict = 'contradicted'
    else:
        verdict = 'unresolved'
    out = {'verdict': verdict, f'{d_k} - {d_f}': dk_vs_df.to_dict(),
           f'{d_k} - {reference}': dk_vs_reference.to_dict()}
    if full in values:
        out[f'{full} - {d_k}'] = paired_difference(values, full, d_k).to_dict()
    return out


def _majority(count: int, total: int) -> bool:
    return total > 0 and count > total / 2


def _over_seeds(per_seed: Mapping[int, str]) -> str:
    """'reproduced' / 'contradicted' when at least two thirds of the seeds say so."""
    need = math.ceil(2 * len(per_seed) / 3)
    for verdict in ('reproduced', 'contradicted'):
        if len(per_seed) and sum(v == verdict for v in per_seed.values()) >= need:
            return verdict
    return 'unresolved'


def claim_df_converges(reports: Mapping[int, dict]) -> dict:
    """Claim 2 from one offset report per seed (``deform_viz.analysis.analyze_offsets``).

    A seed supports it when a majority of its layers have inward d_f (one-sided sign test,
    Holm-corrected over the layers) and the in-object inward component, averaged over the layers,
    exceeds the background control's; it contradicts it when a majority is significantly outward.
    """
    per_seed, details = {}, {}
    for seed, report in sorted(reports.items()):
        across, layers = report['across_layers'], report['layers'].values()
        total = across['num_layers']
        objects = [r['inward_df']['objects']['mean'] for r in layers]
        background = [r['inward_df']['background']['mean'] for r in layers]
        pairs = [(o, b) for o, b in zip(objects, background) if o is not None and b is not None]
        margin = sum(o - b for o, b in pairs) / len(pairs) if pairs else None
        inward, outward = across['inward_df']['supporting'], across['inward_df']['contradicting']
        if _majority(inward, total) and margin is not None and margin > 0:
            per_seed[seed] = 'reproduced'
        elif _majority(outward, total):
            per_seed[seed] = 'contradicted'
        else:
            per_seed[seed] = 'unresolved'
        details[seed] = {'layers': total, 'inward': inward, 'outward': outward,
                         'objects_minus_background': margin, 'verdict': per_seed[seed]}
    return {'verdict': _over_seeds(per_seed), 'per_seed': details}


def claim_dk_tracks_size(reports: Mapping[int, dict]) -> dict:
    """Claim 3 from one offset report per seed: a seed supports it when a majority of its layers
    have Spearman(sqrt box area, d_k radius at the box centre) > 0 (one-sided permutation test,
    Holm over the layers), and contradicts it when a majority have it significantly < 0."""
    per_seed, details = {}, {}
    for seed, report in sorted(reports.items()):
        across = report['across_layers']
        total = across['num_layers']
        grows = across['dk_radius_grows_with_size']
        if _majority(grows['supporting'], total):
            per_seed[seed] = 'reproduced'
        elif _majority(grows['contradicting'], total):
            per_seed[seed] = 'contradicted'
        else:
            per_seed[seed] = 'unresolved'
        rhos = [r['extent_vs_size']['centre']['rho'] for r in report['layers'].values()]
        rhos = [r for r in rhos if r is not None]
        details[seed] = {'layers': total, 'growing': grows['supporting'], 'shrinking': grows['contradicting'],
                         'median_rho': sorted(rhos)[len(rhos) // 2] if rhos else None,
                         'verdict': per_seed[seed]}
    return {'verdict': _over_seeds(per_seed), 'per_seed': details}

