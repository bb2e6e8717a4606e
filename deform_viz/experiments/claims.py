"""The verdicts on the paper's claims, by the rules fixed in ``docs/results/PLAN.md``.

Each verdict is 'reproduced', 'contradicted' or 'unresolved' (or 'not run'), returned with the
numbers it was decided on. Claims 2, 3 and the segmentation finding are decided per seed on one
offset report (``deform_viz.analysis.analyze_offsets``) and then over the seeds.
"""
import math
from typing import Mapping, Optional

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


def majority(count: int, total: int) -> bool:
    """More than half of ``total`` (none of zero)."""
    return total > 0 and count > total / 2


def over_seeds(per_seed: Mapping[int, str]) -> str:
    """'reproduced' / 'contradicted' when at least two thirds of the seeds say so (rounded up:
    2 of 3, 4 of 5), else 'unresolved' (also with no seed)."""
    need = math.ceil(2 * len(per_seed) / 3)
    for verdict in ('reproduced', 'contradicted'):
        if per_seed and sum(v == verdict for v in per_seed.values()) >= need:
            return verdict
    return 'unresolved'


def _layer_verdict(supporting: int, contradicting: int, total: int, margin: Optional[float] = None,
                   needs_margin: bool = False) -> str:
    """A seed's verdict from its layer counts, and where the rule has one, the sign of a margin."""
    support_margin = not needs_margin or (margin is not None and margin > 0)
    contradict_margin = not needs_margin or (margin is not None and margin < 0)
    if majority(supporting, total) and support_margin:
        return 'reproduced'
    if majority(contradicting, total) and contradict_margin:
        return 'contradicted'
    return 'unresolved'


def _median(values) -> Optional[float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def df_margin(report: dict) -> Optional[float]:
    """Mean over the layers of (objects' mean inward d_f - the background control's), the layers
    where both exist; None where none does."""
    pairs = [(r['inward_df']['objects']['mean'], r['inward_df']['background']['mean'])
             for r in report['layers'].values()]
    pairs = [(o, b) for o, b in pairs if o is not None and b is not None]
    return sum(o - b for o, b in pairs) / len(pairs) if pairs else None


def claim_df_converges(reports: Mapping[int, dict]) -> dict:
    """Claim 2 from one offset report per seed.

    A seed supports it when a majority of its layers have significantly inward d_f (one-sided sign
    test, ties below the analysis' floor left out, Holm over the layers) and the margin
    (:func:`df_margin`) is positive; it contradicts it when a majority are significantly outward
    and the margin is negative.
    """
    per_seed, details = {}, {}
    for seed, report in sorted(reports.items()):
        across = report['across_layers']
        total, margin = across['num_layers'], df_margin(report)
        inward, outward = across['inward_df']['supporting'], across['inward_df']['contradicting']
        per_seed[seed] = _layer_verdict(inward, outward, total, margin, needs_margin=True)
        details[seed] = {'layers': total, 'inward': inward, 'outward': outward,
                         'objects_minus_background': margin, 'verdict': per_seed[seed]}
    return {'verdict': over_seeds(per_seed), 'per_seed': details}


def claim_dk_tracks_size(reports: Mapping[int, dict]) -> dict:
    """Claim 3 from one offset report per seed: a seed supports it when a majority of its layers
    have Spearman(sqrt box area, d_k radius at the box centre) > 0 (one-sided permutation test,
    Holm over the layers), and contradicts it when a majority have it significantly < 0. The
    median rho and the median share of folded kernels at box centres are reported beside."""
    per_seed, details = {}, {}
    for seed, report in sorted(reports.items()):
        across = report['across_layers']
        total, grows = across['num_layers'], across['dk_radius_grows_with_size']
        per_seed[seed] = _layer_verdict(grows['supporting'], grows['contradicting'], total)
        centres = [r['extent_vs_size']['centre'] for r in report['layers'].values()]
        details[seed] = {'layers': total, 'growing': grows['supporting'], 'shrinking': grows['contradicting'],
                         'median_rho': _median(c['rho'] for c in centres),
                         'median_folded_share': _median(c.get('folded_share') for c in centres),
                         'verdict': per_seed[seed]}
    return {'verdict': over_seeds(per_seed), 'per_seed': details}


def claim_region_segments(reports: Mapping[int, dict]) -> dict:
    """The segmentation finding from one offset report per seed: a seed supports it when a majority
    of its layers have a negative-divergence mask whose IoU with the objects is significantly above
    its null (each region scored on another image's objects; one-sided, Holm over the layers),
    and contradicts it when a majority are significantly below."""
    per_seed, details = {}, {}
    for seed, report in sorted(reports.items()):
        across = report['across_layers']
        total, test = across['num_layers'], across['negative_divergence_segments']
        per_seed[seed] = _layer_verdict(test['supporting'], test['contradicting'], total)
        masks = [r['negative_divergence_mask'] for r in report['layers'].values()]
        details[seed] = {'layers': total, 'above_null': test['supporting'], 'below_null': test['contradicting'],
                         'median_iou': _median(m['iou'] for m in masks),
                         'median_null_iou': _median(m['null']['null_mean'] for m in masks),
                         'verdict': per_seed[seed]}
    return {'verdict': over_seeds(per_seed), 'per_seed': details}
