"""Table 1 of the "revisiting" paper at CPU scale: paired rows over seeds on the synthetic dataset.

Per seed, every row (a config in ``configs/synthetic/``) starts from the baseline's initial weights
and sees the same data (:mod:`.pairing`); each trained full DCN is evaluated again with its offsets
projected to d_f or d_k. Every run directory keeps its result, so an interrupted ablation resumes,
and a directory made with other settings is refused. The analysis is fixed in
``docs/results/PLAN.md``.
"""
import os
import os.path as osp
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from mmengine.config import Config
from mmengine.runner import find_latest_checkpoint

from ..analysis import analyze_offsets, headline
from ..analysis.report import REPORT_VERSION
from ..datasets import make_synthetic_coco
from ..engine import evaluate, load_config, set_schedule, train, use_synthetic_data
from ..pretraining import PRESETS, pretrain_backbone, selected_preset
from ..variants import LABELS, projected_variant
from .claims import claim_df_converges, claim_dk_carries_the_gain, claim_dk_tracks_size, claim_region_segments
from .paired import PairingError, check_pairing
from .pairing import build_initialised_model, read_first_loss, write_paired_init
from .records import check_recorded, read_json, write_json
from .report import claims_markdown, headline_spread, markdown_table, paired_report, plot_paired, spread_table

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG_DIR = osp.join(REPO, 'configs', 'synthetic')
REFERENCE = 'baseline'
COCO_FINEST_SCALE, COCO_SIDE = 56, 800  # mmdet's RoI-to-level scale, at COCO's image side


DETECTORS = {'faster': 'faster-rcnn', 'mask': 'mask-rcnn'}  # --detector -> config name prefix


@dataclass(frozen=True)
class Row:
    """A trained row: its variant key and its configs' name after the detector's prefix."""
    variant: str
    name: str

    def config(self, detector: str = 'faster') -> str:
        """The row's config file in ``configs/synthetic/`` for ``detector`` (a key of DETECTORS)."""
        return f'{DETECTORS[detector]}_{self.name}'


TRAINED_ROWS: Tuple[Row, ...] = (
    Row('baseline', 'r50-w16_fpn_synthetic.py'),
    Row('dcn-df', 'r50-w16-dconv-df-c3-c5_fpn_synthetic.py'),
    Row('dcn-dk', 'r50-w16-dconv-dk-c3-c5_fpn_synthetic.py'),
    Row('dcn', 'r50-w16-dconv-c3-c5_fpn_synthetic.py'),
    Row('dkernel-local-s4', 'r50-w16-dkernel-local-s4-c3-c5_fpn_synthetic.py'),
    Row('dcn-static', 'r50-w16-dconv-static-c3-c5_fpn_synthetic.py'),  # control, on request
)
ROWS = {row.variant: row for row in TRAINED_ROWS}
PROJECTED_FROM = 'dcn'
PROJECTIONS = tuple((projected_variant(PROJECTED_FROM, c), c) for c in ('d_f', 'd_k'))

METRICS = ('bbox_mAP', 'bbox_mAP_75', 'bbox_mean_best_iou')
MASK_METRICS = ('segm_mAP', 'segm_mAP_75')  # beside METRICS with --detector mask
METRIC_NAMES = {'bbox_mAP': 'AP', 'bbox_mAP_75': 'AP75', 'bbox_mean_best_iou': 'mean best IoU',
                'segm_mAP': 'mask AP', 'segm_mAP_75': 'mask AP75'}
# settings added after runs were first recorded, with the value the runs made before had (runs
# recorded without their offset learning rates were trained with configs of another protocol)
ADDED_SETTINGS = {'detector': 'faster', 'offset_lr_mult': None, 'offset_lr': None}
# the confirmatory table of docs/results/PLAN.md: seeds no earlier run used, per detector
DEFAULT_SEEDS = {'faster': [3, 4, 5, 6, 7], 'mask': [3, 4, 5]}
DEFAULT_ROWS = {'faster': ['baseline', 'dcn-df', 'dcn-dk', 'dcn', 'dkernel-local-s4'],
                'mask': ['baseline', 'dcn-df', 'dcn-dk', 'dcn']}
HEADLINE_NAMES = {  # the numbers tools/demo.py prints, as analysis.headline names them
    'dk_size_rho': 'Spearman(sqrt box area, d_k radius at the box centre)',
    'dk_size_p': 'its permutation p',
    'inward_df': 'inward d_f per object (input px)',
    'inward_df_fraction': 'share of objects with inward d_f',
    'inward_df_p': 'sign-test p (inward)',
    'inward_df_background': 'inward d_f, background control (input px)',
    'effective_dilation_objects': 'effective dilation on objects (input px)',
    'effective_dilation_background': 'effective dilation on background (input px)',
    'layers_dk_grows_with_size': 'layers where d_k grows with size (Holm)',
    'layers_inward_df': 'layers with inward d_f (Holm)',
    'mask_iou': 'negative-divergence mask IoU with the objects',
    'mask_null_iou': 'its null (masks of other images)',
    'layers_mask_beats_null': 'layers whose mask beats its null (Holm)',
}


@dataclass
class AblationSettings:
    """Everything a run depends on; stored in each run directory and compared on reuse."""
    seeds: Optional[List[int]] = None  # None: DEFAULT_SEEDS of the detector
    rows: Optional[List[str]] = None  # None: DEFAULT_ROWS of the detector
    iters: Optional[int] = None  # None: the configs' schedule
    num_train: int = 2000
    num_val: int = 200
    image_size: int = 192
    data_root: str = 'data/synthetic'
    work_dir: str = ''  # '': work_dirs/mini_ablation, or work_dirs/mini_ablation-mask for Mask R-CNN
    detector: str = 'faster'
    offset_lr_mult: Optional[float] = None  # None: the configs' learning-rate multiplier of conv_offset

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f'unknown detector {self.detector!r}; choose from {list(DETECTORS)}')
        self.seeds = list(DEFAULT_SEEDS[self.detector] if self.seeds is None else self.seeds)
        self.rows = list(DEFAULT_ROWS[self.detector] if self.rows is None else self.rows)
        if not self.work_dir:
            self.work_dir = 'work_dirs/mini_ablation' + ('' if self.detector == 'faster' else f'-{self.detector}')
        unknown = [r for r in self.rows if r not in ROWS]
        if unknown:
            raise ValueError(f'unknown rows {unknown}; choose from {list(ROWS)}')
        if REFERENCE not in self.rows:
            raise ValueError(f'the rows must include {REFERENCE!r}: every effect is paired against it')
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f'seeds must be distinct non-negative integers, got {self.seeds}')
        for name in ('num_train', 'num_val', 'image_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
        if self.iters is not None and self.iters < 1:
            raise ValueError(f'iters must be positive, got {self.iters}')
        if self.offset_lr_mult is not None and not self.offset_lr_mult > 0:
            raise ValueError(f'offset_lr_mult must be positive, got {self.offset_lr_mult}')

    def run_key(self) -> dict:
        """What a run of one row and seed depends on (not which other rows or seeds run)."""
        return {k: v for k, v in asdict(self).items() if k not in ('seeds', 'rows', 'work_dir')}

    @property
    def metrics(self) -> Tuple[str, ...]:
        return METRICS + (MASK_METRICS if self.detector == 'mask' else ())


def row_config(row: Row, settings: AblationSettings, seed: int, data_root: str, run_dir: str) -> Config:
    """The config of ``row`` for ``seed``: synthetic data, the settings' schedule, paired start."""
    cfg = load_config(osp.join(CONFIG_DIR, row.config(settings.detector)), work_dir=run_dir)
    use_synthetic_data(cfg, data_root, (settings.image_size, settings.image_size))
    # RoIs go to the FPN level they would reach at the same fraction of an 800-px COCO image
    for extractor in ('bbox_roi_extractor', 'mask_roi_extractor'):
        if extractor in cfg.model.roi_head:
            cfg.model.roi_head[extractor].finest_scale = COCO_FINEST_SCALE * settings.image_size / COCO_SIDE
    cfg.randomness = dict(seed=seed)
    if settings.iters is not None:
        set_schedule(cfg, settings.iters)
    if settings.offset_lr_mult is not None:  # the static control's frozen weights stay frozen
        paramwise = cfg.optim_wrapper.setdefault('paramwise_cfg', {})
        paramwise.setdefault('custom_keys', {})['conv_offset'] = dict(lr_mult=settings.offset_lr_mult)
    cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type='PairedStartHook', seed=seed)]
    return cfg


def offset_learning_rates(cfg: Config) -> Dict[str, dict]:
    """The ``paramwise_cfg.custom_keys`` of ``cfg`` (how fast its offset predictors learn)."""
    return {k: dict(v) for k, v in sorted(cfg.optim_wrapper.get('paramwise_cfg', {}).get('custom_keys', {}).items())}


def _metrics(raw: dict, metrics: Tuple[str, ...]) -> Dict[str, float]:
    # mmdet's CocoMetric returns nothing for a detector without detections: COCO's AP is then 0
    return {m: float(raw.get(f'coco/{m}', 0.0)) for m in metrics}


class Ablation:
    """The runs of one ablation: ``run()`` trains what is missing and returns the report."""

    def __init__(self, settings: AblationSettings, log=print):
        self.settings = settings
        self.work_dir = osp.abspath(settings.work_dir)
        self.log = log
        self._reference_state = {}

    def run_dir(self, variant: str, seed: int) -> str:
        return osp.join(self.work_dir, variant, f'seed{seed}')

    def _paired_init(self, row: Row, seed: int, data_root: str) -> str:
        """The row's initial checkpoint for ``seed``, made from the baseline's initial weights."""
        path = osp.join(self.work_dir, 'init', f'seed{seed}', f'{row.variant}.pth')
        if osp.isfile(path):
            return path
        if seed not in self._reference_state:
            reference = row_config(ROWS[REFERENCE], self.settings, seed, data_root,
                                   self.run_dir(REFERENCE, seed))
            self._reference_state[seed] = build_initialised_model(reference, seed).state_dict()
        cfg = row_config(row, self.settings, seed, data_root, self.run_dir(row.variant, seed))
        return write_paired_init(cfg, self._reference_state[seed], path)

    def train_row(self, row: Row, seed: int, data_root: str) -> dict:
        """Train (or reuse) one row for one seed, evaluate it, and return its result record."""
        run_dir = self.run_dir(row.variant, seed)
        cfg = row_config(row, self.settings, seed, data_root, run_dir)
        key = {**self.settings.run_key(), 'offset_lr': offset_learning_rates(cfg)}
        check_recorded(run_dir, key, runs='a run', added=ADDED_SETTINGS)
        result_file = osp.join(run_dir, 'result.json')
        result = read_json(result_file)
        if result is not None:
            return result
        self.log(f'\n=== {LABELS.get(row.variant, row.variant)}, seed {seed} ===')
        start = time.time()
        latest = find_latest_checkpoint(run_dir)
        if latest is None:  # a new run starts from the paired weights, an interrupted one resumes
            cfg.load_from = self._paired_init(row, seed, data_root)
        train(cfg, resume=latest)
        with open(osp.join(run_dir, 'last_checkpoint')) as f:
            checkpoint = f.read().strip()
        train_minutes = (time.time() - start) / 60
        cfg = row_config(row, self.settings, seed, data_root, osp.join(run_dir, 'test'))
        dumps = osp.join(run_dir, 'offsets') if row.variant == PROJECTED_FROM else None
        raw = evaluate(cfg, checkpoint, dump_offsets=dumps)
        result = {'variant': row.variant, 'seed': seed, 'checkpoint': checkpoint,
                  'first_loss': read_first_loss(run_dir), 'metrics': _metrics(raw, self.settings.metrics),
                  'train_minutes': round(train_minutes, 2)}
        if dumps is not None:  # the offsets of the full DCN, for claims 2 and 3
            result['offset_report'] = osp.join(run_dir, 'offset_report.json')
            self.offset_report(result, data_root)
        write_json(result_file, result)
        return result

    def offset_report(self, result: dict, data_root: str) -> dict:
        """The offset analysis of a full-DCN run's dumps: the stored one, or made again when it was
        written by another version of the analysis (the dumps stay in the run directory)."""
        report = read_json(result['offset_report'])
        if report is None or report.get('version') != REPORT_VERSION:
            dumps = osp.join(osp.dirname(result['offset_report']), 'offsets')
            report = analyze_offsets(dumps, osp.join(data_root, 'annotations', 'instances_val.json'))
            write_json(result['offset_report'], report)
        return report

    def project_row(self, trained: dict, variant: str, component: str, data_root: str) -> dict:
        """Evaluate a trained full DCN with its offsets projected to ``component``."""
        run_dir = self.run_dir(PROJECTED_FROM, trained['seed'])
        result_file = osp.join(run_dir, f'result_{variant}.json')
        result = read_json(result_file)
        if result is not None:
            return result
        cfg = row_config(ROWS[PROJECTED_FROM], self.settings, trained['seed'], data_root,
                         osp.join(run_dir, f'test_{component}'))
        cfg.model.backbone.dcn.component = component
        result = {'variant': variant, 'seed': trained['seed'], 'checkpoint': trained['checkpoint'],
                  'metrics': _metrics(evaluate(cfg, trained['checkpoint']), self.settings.metrics)}
        write_json(result_file, result)
        return result

    def make_data(self) -> dict:
        """The synthetic dataset of the settings (reused when complete); see ``make_synthetic_coco``."""
        s = self.settings
        return make_synthetic_coco(s.data_root, num_train=s.num_train, num_val=s.num_val,
                                   image_size=(s.image_size, s.image_size), seed=0)

    def run(self) -> dict:
        start = time.time()
        s = self.settings
        pretrain_backbone(PRESETS[selected_preset()], log=self.log)  # the configs' backbone; reused when cached
        data = self.make_data()
        rows = [ROWS[v] for v in ROWS if v in s.rows]  # table order
        values = {m: {} for m in s.metrics}
        pairing, left_out, offset_reports, trained_minutes = {}, {}, {}, []
        for seed in s.seeds:
            results = [self.train_row(row, seed, data['out_dir']) for row in rows]
            trained_minutes += [r['train_minutes'] for r in results]
            first = {r['variant']: r['first_loss'] for r in results}
            pairing[seed] = first
            try:
                check_pairing(first)
            except PairingError as e:  # the plan: the seed leaves every comparison, the others go on
                left_out[seed] = str(e)
                self.log(f'seed {seed} is left out: {e}')
                continue
            for r in results:
                for m in s.metrics:
                    values[m].setdefault(r['variant'], {})[seed] = r['metrics'][m]
                if r['variant'] == PROJECTED_FROM:
                    offset_reports[seed] = self.offset_report(r, data['out_dir'])
                    for variant, component in PROJECTIONS:
                        p = self.project_row(r, variant, component, data['out_dir'])
                        for m in s.metrics:
                            values[m].setdefault(variant, {})[seed] = p['metrics'][m]
        order = [r.variant for r in rows] + [v for v, _ in PROJECTIONS if PROJECTED_FROM in s.rows]
        report = paired_report(values, order, REFERENCE) if len(left_out) < len(s.seeds) else {}
        claims = self.claims(values, offset_reports) if report else {}
        headlines = {seed: headline(r) for seed, r in offset_reports.items()}
        return {'settings': asdict(s), 'rows': order, 'metrics': report, 'pairing': pairing,
                'left_out_seeds': left_out, 'claims': claims, 'offset_headlines': headlines,
                'offset_headline_spread': headline_spread(headlines) if headlines else {},
                'train_minutes': round(sum(trained_minutes), 1),
                'minutes': round((time.time() - start) / 60, 1)}


    def claims(self, values: dict, offset_reports: dict) -> dict:
        """Claim 1 in bbox AP (and segm AP for Mask R-CNN); claims 2, 3 and the segmentation finding
        from the full DCN's offset reports."""
        claims = {'d_k carries the gain': claim_dk_carries_the_gain(values['bbox_mAP'])}
        if 'segm_mAP' in values:
            claims['d_k carries the gain (segm AP)'] = claim_dk_carries_the_gain(values['segm_mAP'])
        claims.update({'d_f converges': claim_df_converges(offset_reports),
                       'd_k tracks size': claim_dk_tracks_size(offset_reports),
                       'negative divergence segments objects': claim_region_segments(offset_reports)})
        return claims


def write_outputs(result: dict, out_dir: str, command: str) -> Dict[str, str]:
    """The JSON (with the command that made it), the markdown table and the plot, in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    result = {**result, 'command': command}
    paths = {'json': osp.join(out_dir, 'mini_ablation.json'),
             'markdown': osp.join(out_dir, 'mini_ablation.md'),
             'plot': osp.join(out_dir, 'mini_ablation.png')}
    write_json(paths['json'], result)
    metrics = [m for m in METRICS + MASK_METRICS if m in result['metrics']]
    table = markdown_table(result['metrics'], result['rows'], LABELS, metrics, METRIC_NAMES)
    if result.get('offset_headline_spread'):
        layer = next(iter(result['offset_headlines'].values()))['layer']
        table += (f'\n\nOffset statistics of the full DCN in {layer} (the demo\'s numbers), over seeds:\n\n'
                  + spread_table(result['offset_headline_spread'], HEADLINE_NAMES))
    claims = claims_markdown(result['claims'])
    left_out = ''.join(f'\n\nSeed {seed} is left out of every comparison: {why}'
                       for seed, why in result.get('left_out_seeds', {}).items())
    with open(paths['markdown'], 'w') as f:
        f.write(f'{table}{left_out}\n\nClaims (rules of docs/results/PLAN.md):\n\n{claims}\n')
    s = result['settings']
    detector = {'faster': 'Faster', 'mask': 'Mask'}[s.get('detector', 'faster')]
    plot_paired(result['metrics'], result['rows'], LABELS, metrics, METRIC_NAMES, paths['plot'],
                f"{detector} R-CNN: paired differences to the baseline, seeds {s['seeds']} (90% t-intervals); "
                f"{s['num_train']} train images at {s['image_size']} px")
    return paths
