"""Finished runs collected into the papers' tables, next to the published numbers.

:func:`collect_results` reads mmengine work dirs (``work_dirs/<config name>`` as written by
:func:`deform_viz.engine.train` / :func:`~deform_viz.engine.evaluate`, or folders holding
several); ``tools/collect_results.py`` prints its records with :data:`FORMATS`. For every session
(``WORK_DIR/<timestamp>/``) it reads

* the config the run used: ``<timestamp>/vis_data/config.py``, else the ``WORK_DIR/*.py`` mmengine
  dumped (its file name is the config's name);
* the COCO metrics: ``<timestamp>/vis_data/scalars.json`` (validation during training; the value at
  the last epoch / iteration of the schedule is the final one) or ``<timestamp>/<timestamp>.json``
  (written by an evaluation);
* the log ``<timestamp>/<timestamp>.log``, to say where an unfinished run stopped and why.

A run is matched to a table row by what its config builds (detector, ``backbone.dcn`` through
:func:`deform_viz.variants.variant_of_conv_cfg`, stages carrying it), so renamed work dirs and
``--cfg-options`` overrides are classified by what actually ran; the config file name only tells
test-time projection configs apart. Each run records the data it was evaluated on: only runs on
COCO fill the paper tables (the values of :mod:`deform_viz.paper_results`), runs on other data
(the synthetic demo) are listed apart, labelled, unless ``any_data``. Runs without final metrics
are listed with the reason, never dropped.
"""
import csv
import io
import json
import math
import os
import os.path as osp
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .datasets import SYNTHETIC_CLASSES
from .paper_results import DETECTORS, SOURCES, TABLE1_MARKS, TABLES, paper_rows
from .variants import LABELS, projected_variant, variant_of_conv_cfg

SESSION_DIR = re.compile(r'^\d{8}_\d{6}$')
TRAIN_EPOCH_LINE = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]')
TRAIN_ITER_LINE = re.compile(r'Iter\(train\)\s*\[\s*(\d+)/(\d+)\]')
VAL_LINE = re.compile(r'(?:Epoch|Iter)\(val\)\s*(?:\[(\d+)\])?\s*\[\s*(\d+)/(\d+)\]')
TEST_LINE = re.compile(r'(?:Epoch|Iter)\(test\)\s*\[\s*(\d+)/(\d+)\]')
SAVED_CKPT = re.compile(r'Saving checkpoint at (\d+) (epochs|iterations)')
GPU_NUMBER = re.compile(r'GPU number:\s*(\d+)')
LR_SCALED = re.compile(r'current batch size is (\d+)\. Scaling the original LR by ([\d.eE+-]+)')
EXCEPTION_LINE = re.compile(r'^(?:[A-Za-z_][\w.]*)(?:Error|Exception|Interrupt|Exit)\b.*')
DETECTOR_TYPES = {'FasterRCNN': 'faster-rcnn', 'MaskRCNN': 'mask-rcnn'}
STAGE_NAMES = ('c2', 'c3', 'c4', 'c5')
BBOX, SEGM = 'coco/bbox_mAP', 'coco/segm_mAP'
# The papers' evaluation data, by annotation file name; runs on anything else stay out of their tables.
PAPER_DATA = {'instances_val2017.json': 'COCO val2017', 'image_info_test-dev2017.json': 'COCO test-dev2017'}
SYNTHETIC_DATA = 'synthetic shapes'
# The configs of the tables, by file name: what each builds.
KNOWN_CONFIGS = {osp.splitext(osp.basename(r.config))[0]: (r.detector, r.variant) for r in paper_rows()}
# What the paper's protocol is for each detector: total images per step and the matching lr.
PROTOCOL_BATCH = {'faster-rcnn': 8, 'mask-rcnn': 4}
LR_PER_IMAGE = 0.02 / 16


# ----------------------------------------------------------------------------------------------
# What a config builds
# ----------------------------------------------------------------------------------------------
@dataclass
class ModelInfo:
    detector: str  # 'faster-rcnn', 'mask-rcnn', or the model type
    variant: str  # a variant key of deform_viz.variants, or the unregistered layer type
    backbone: str  # e.g. 'ResNet-50'
    stages: str  # stages carrying the variant, e.g. 'c3-c5' ('' for the baseline)
    dcn_type: Optional[str] = None

    @property
    def standard(self) -> bool:
        """R-50 with the variant in c3-c5 (or a plain R-50): the architecture of the tables."""
        return self.backbone == 'ResNet-50' and self.stages in ('', 'c3-c5')


def _stages(stage_with_dcn) -> str:
    on = [name for name, flag in zip(STAGE_NAMES, stage_with_dcn or ()) if flag]
    if not on:
        return ''
    idx = [STAGE_NAMES.index(s) for s in on]
    if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 1:
        return f'{on[0]}-{on[-1]}'
    return ','.join(on)


def describe_model(cfg: dict) -> ModelInfo:
    """Classify the model of a (dumped) config dict by what it builds."""
    model = cfg.get('model', {}) or {}
    detector = DETECTOR_TYPES.get(model.get('type'), str(model.get('type')))
    bb = model.get('backbone', {}) or {}
    backbone = f"{bb.get('type', '?')}-{bb['depth']}" if 'depth' in bb else str(bb.get('type', '?'))
    dcn = bb.get('dcn')
    stages = _stages(bb.get('stage_with_dcn')) if dcn else ''
    if not dcn or not stages:
        return ModelInfo(detector, 'baseline', backbone, '')
    return ModelInfo(detector, variant_of_conv_cfg(dcn), backbone, stages, dcn.get('type', '?'))


def evaluation_data(cfg: dict, mode: str) -> str:
    """What a session's final metrics were computed on (its val data; test data for an
    evaluation): ``'COCO val2017'``, ``'COCO test-dev2017'``, ``'synthetic shapes'`` or the
    annotation file."""
    split = 'test' if mode == 'test' else 'val'
    dataset = (cfg.get(f'{split}_dataloader') or {}).get('dataset') or {}
    while isinstance(dataset.get('dataset'), dict):  # RepeatDataset and other wrappers
        dataset = dataset['dataset']
    ann_file = str(dataset.get('ann_file') or '')
    if osp.basename(ann_file) in PAPER_DATA:
        return PAPER_DATA[osp.basename(ann_file)]
    if tuple((dataset.get('metainfo') or {}).get('classes') or ()) == tuple(SYNTHETIC_CLASSES):
        return SYNTHETIC_DATA
    return osp.join(str(dataset.get('data_root') or ''), ann_file) if ann_file else 'unknown'


# ----------------------------------------------------------------------------------------------
# One session: WORK_DIR/<timestamp>/
# ----------------------------------------------------------------------------------------------
@dataclass
class Session:
    work_dir: str
    path: str
    timestamp: str
    config_name: Optional[str] = None  # stem of the config file, when known
    config_path: Optional[str] = None
    cfg: Optional[dict] = None
    cfg_error: Optional[str] = None
    mode: str = 'train'  # 'train' | 'test'
    log_path: Optional[str] = None
    log_lines: List[str] = field(default_factory=list)
    val_metrics: List[dict] = field(default_factory=list)  # scalars.json entries holding COCO metrics
    test_metrics: Optional[dict] = None
    last_train_step: Optional[int] = None  # global iteration of the last logged training step


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read().splitlines()
    except OSError:
        return []


def _read_json_lines(path: str) -> List[dict]:
    out = []
    for line in _read_lines(path):
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed process
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _load_cfg(path: str) -> Tuple[Optional[dict], Optional[str]]:
    try:
        from mmengine.config import Config
        cfg = Config.fromfile(path, import_custom_modules=False)
        return cfg.to_dict(), None
    except Exception as e:  # noqa: BLE001  an unreadable config is reported, not fatal
        return None, f'{type(e).__name__}: {e}'


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read()
    except OSError:
        return None


def _dumped_config_name(work_dir: str, session_dir: str, vis_config: Optional[str]) -> Optional[str]:
    """The config file name of a session: the WORK_DIR/*.py mmengine dumped for it."""
    candidates = sorted(p for p in os.listdir(work_dir) if p.endswith('.py'))
    if not candidates:
        return None
    if vis_config is not None:
        text = _read_text(vis_config)
        same = [p for p in candidates if _read_text(osp.join(work_dir, p)) == text]
        if len(same) == 1:
            return same[0]
        if same:
            candidates = same
    if len(candidates) == 1:
        return candidates[0]
    # several configs dumped in one work dir: the one written when the session started
    start = os.stat(session_dir).st_mtime
    try:
        start = time.mktime(time.strptime(osp.basename(session_dir), '%Y%m%d_%H%M%S'))
    except ValueError:
        pass
    return min(candidates, key=lambda p: abs(os.stat(osp.join(work_dir, p)).st_mtime - start))


def read_session(work_dir: str, session_dir: str) -> Session:
    ts = osp.basename(session_dir)
    s = Session(work_dir=work_dir, path=session_dir, timestamp=ts)
    vis = osp.join(session_dir, 'vis_data')
    vis_config = osp.join(vis, 'config.py')
    vis_config = vis_config if osp.isfile(vis_config) else None
    name = _dumped_config_name(work_dir, session_dir, vis_config)
    if name is not None:
        s.config_name = osp.splitext(name)[0]
    s.config_path = vis_config or (osp.join(work_dir, name) if name else None)
    if s.config_path:
        s.cfg, s.cfg_error = _load_cfg(s.config_path)
    log = osp.join(session_dir, f'{ts}.log')
    if osp.isfile(log):
        s.log_path = log
        s.log_lines = _read_lines(log)
    scalars = osp.join(vis, 'scalars.json')
    if not osp.isfile(scalars):
        scalars = osp.join(vis, f'{ts}.json')
    for entry in _read_json_lines(scalars):
        if BBOX in entry or SEGM in entry:
            s.val_metrics.append(entry)
        elif 'loss' in entry or 'lr' in entry:
            s.last_train_step = entry.get('iter', entry.get('step'))
    test_json = osp.join(session_dir, f'{ts}.json')
    if osp.isfile(test_json):
        try:
            with open(test_json) as f:
                data = json.load(f)
            if isinstance(data, dict):
                s.test_metrics = data
        except (OSError, json.JSONDecodeError):
            pass
    s.mode = _session_mode(s)
    return s


def _session_mode(s: Session) -> str:
    if s.test_metrics is not None:
        return 'test'
    text = '\n'.join(s.log_lines)
    if s.val_metrics or s.last_train_step is not None or 'Epoch(train)' in text or 'Iter(train)' in text:
        return 'train'
    if 'Epoch(test)' in text or 'Iter(test)' in text:
        return 'test'
    if s.cfg is not None and s.cfg.get('load_from') and not s.cfg.get('resume'):
        return 'test'  # tools/test.py sets load_from to the checkpoint it evaluates
    return 'train'


# ----------------------------------------------------------------------------------------------
# Status of a session: final metrics, or why there are none
# ----------------------------------------------------------------------------------------------
def _schedule(cfg: Optional[dict]) -> Tuple[str, Optional[int]]:
    train_cfg = (cfg or {}).get('train_cfg') or {}
    if 'max_epochs' in train_cfg or 'Epoch' in str(train_cfg.get('type', '')):
        return 'epoch', train_cfg.get('max_epochs')
    if 'max_iters' in train_cfg:
        return 'iter', train_cfg.get('max_iters')
    return 'epoch', None


def _last_exception(lines: Sequence[str]) -> Optional[str]:
    """The exception a log recorded (a traceback written by the logger), if any."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith('Traceback (most recent call last)'):
            for line in lines[i + 1:]:
                if EXCEPTION_LINE.match(line.strip()):
                    return line.strip()
            return 'an exception (traceback in the log)'
    return None


def _age(path: str) -> str:
    seconds = max(0.0, time.time() - os.stat(path).st_mtime)
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 7200:
        return f'{seconds / 60:.0f} min'
    if seconds < 172800:
        return f'{seconds / 3600:.1f} h'
    return f'{seconds / 86400:.0f} days'


def _fmt(value: Optional[float]) -> str:
    return '' if value is None else f'{value:.3f}'


def session_status(s: Session) -> Tuple[Optional[dict], str, str]:
    """(final metrics or None, 'complete'|'incomplete'|'failed', reason / where the metrics come from)."""
    if s.cfg is None:
        why = f'config unreadable ({s.cfg_error})' if s.cfg_error else 'no dumped config'
        if s.test_metrics or s.val_metrics:
            return None, 'failed', f'{why}: metrics found but the run cannot be classified'
        return None, 'failed', f'{why} and no metrics'
    if s.mode == 'test':
        if s.test_metrics and (BBOX in s.test_metrics or SEGM in s.test_metrics):
            return s.test_metrics, 'complete', 'tools/test.py'
        return None, *_why_unfinished(s, 'test')
    unit, total = _schedule(s.cfg)
    if s.val_metrics:
        last = s.val_metrics[-1]
        step = last.get('step')
        if total is not None and step == total:
            return last, 'complete', f'val at {unit} {step}'
        if total is not None and unit == 'iter' and s.last_train_step == total:
            return last, 'complete', f'val at iter {total}'
    return None, *_why_unfinished(s, 'train')


def _why_unfinished(s: Session, mode: str) -> Tuple[str, str]:
    lines = s.log_lines
    if s.log_path is None:
        return 'failed', f'no log file in {s.path} (the run stopped before mmengine started logging)'
    exc = _last_exception(lines)
    unit, total = _schedule(s.cfg)
    where = ''
    in_val = False
    last_train = None
    last_saved = None
    for line in lines:
        m = TRAIN_EPOCH_LINE.search(line)
        if m:
            last_train = ('epoch', int(m.group(1)), int(m.group(2)), int(m.group(3)))
            in_val = False
            continue
        m = TRAIN_ITER_LINE.search(line)
        if m:
            last_train = ('iter', int(m.group(1)), int(m.group(2)))
            in_val = False
            continue
        if VAL_LINE.search(line) or TEST_LINE.search(line):
            in_val = True
        m = SAVED_CKPT.search(line)
        if m:
            last_saved = (m.group(2), int(m.group(1)))
    if mode == 'test':
        where = 'during testing' if in_val else 'before the first test batch'
    elif last_train is None:
        where = 'before the first logged training iteration'
        if in_val:
            where = 'during validation, before any logged training iteration'
    elif last_train[0] == 'epoch':
        _, ep, it, n = last_train
        of = f' of {total}' if total else ''
        where = f'at epoch {ep}{of}, iteration {it}/{n}'
        if in_val:
            where = f'during validation after epoch {ep}{of} (iteration {it}/{n})'
        elif it == n:
            saved = '; checkpoint saved' if last_saved == ('epochs', ep) else ''
            where = f'at the end of epoch {ep}{of} (iteration {it}/{n} logged{saved}; nothing after it)'
    else:
        _, it, n = last_train
        where = f'at iteration {it}/{n}'
        if in_val:
            where = f'during validation after iteration {it}/{n}'
    earlier = ''
    if s.val_metrics:
        last = s.val_metrics[-1]
        ap = ', '.join(f'{k.split("/")[1].replace("_mAP", "")} AP {last[k]:.3f}'
                       for k in (BBOX, SEGM) if k in last)
        earlier = f'; last metrics at {unit} {last.get("step")}: {ap}'
    if exc:
        return 'failed', f'crashed {where}: {exc}{earlier}'
    return 'incomplete', (f'no final metrics: log stops {where} (crashed, killed or still running; '
                          f'log last written {_age(s.log_path)} ago){earlier}')


# ----------------------------------------------------------------------------------------------
# Runs: what the tables show
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    work_dir: str
    session: str
    mode: str
    config: Optional[str]
    status: str
    reason: str
    detector: Optional[str] = None
    variant: Optional[str] = None
    standard: bool = False
    stages: str = ''
    backbone: str = ''
    bbox_ap: Optional[float] = None
    segm_ap: Optional[float] = None
    notes: List[str] = field(default_factory=list)
    load_from: Optional[str] = None
    data: str = ''  # see evaluation_data

    @property
    def on_paper_data(self) -> bool:
        return self.data in PAPER_DATA.values()


def _protocol_notes(s: Session, info: ModelInfo) -> List[str]:
    """Where a training run left the paper's protocol (schedule, batch, lr)."""
    cfg = s.cfg or {}
    notes = []
    unit, total = _schedule(cfg)
    if unit == 'epoch' and total is not None and total != 12:
        notes.append(f'{total} epoch{"s" if total != 1 else ""} (1x: 12)')
    elif unit == 'iter' and total is not None:
        notes.append(f'{total} iterations (1x: 12 epochs)')
    text = '\n'.join(s.log_lines)
    gpus = GPU_NUMBER.search(text)
    per_gpu = (cfg.get('train_dataloader') or {}).get('batch_size')
    lr = (((cfg.get('optim_wrapper') or {}).get('optimizer')) or {}).get('lr')
    if gpus and per_gpu:
        batch = int(gpus.group(1)) * int(per_gpu)
        scaled = LR_SCALED.search(text)
        if scaled and lr is not None:
            lr = lr * float(scaled.group(2))
        want = PROTOCOL_BATCH.get(info.detector)
        if want is not None and batch != want:
            notes.append(f'{batch} images/step (paper: {want})')
        if lr is not None and batch and not math.isclose(lr / batch, LR_PER_IMAGE, rel_tol=1e-3):
            notes.append(f'lr {lr:g} at {batch} images/step (linear rule: {LR_PER_IMAGE * batch:g})')
    if not info.standard:
        notes.append(f'{info.backbone}, variant in {info.stages or "no stage"} (tables: ResNet-50, c3-c5)')
    return notes


def _projected(s: Session, info: ModelInfo) -> Optional[str]:
    """The variant key (``'dcn@test-df'``) of a session that evaluates a full-DCN checkpoint with a
    test-time projection config (``..._test-df``, ``..._test-dk``), else None."""
    m = re.search(r'_test-(df|dk)$', s.config_name or '')
    trained, _, component = info.variant.rpartition('-')
    if s.mode != 'test' or m is None or trained not in ('dcn', 'dcnv2') or component != m.group(1):
        return None
    return projected_variant(trained, component)


def collect_runs(paths: Sequence[str]) -> List[Run]:
    """Every run in the work dirs at ``paths`` (or folders holding them); a path without any is
    a failed run saying so."""
    runs: List[Run] = []
    for path in paths:
        work_dirs = find_work_dirs(path)
        if not work_dirs:
            reason = 'no such directory' if not osp.isdir(path) else 'no mmengine session (<timestamp>/) found'
            runs.append(Run(work_dir=path, session='', mode='', config=None, status='failed', reason=reason))
        for wd in work_dirs:
            runs.extend(runs_of_work_dir(wd))
    return runs


def find_work_dirs(path: str, depth: int = 2) -> List[str]:
    """``path`` if it holds mmengine sessions, else the work dirs found below it."""
    if not osp.isdir(path):
        return []
    entries = sorted(os.listdir(path))
    if any(SESSION_DIR.match(e) and osp.isdir(osp.join(path, e)) for e in entries):
        return [path]
    if depth == 0:
        return []
    found = []
    for e in entries:
        sub = osp.join(path, e)
        if osp.isdir(sub) and not e.startswith('.'):
            found.extend(find_work_dirs(sub, depth - 1))
    return found


def runs_of_work_dir(work_dir: str) -> List[Run]:
    """The latest train session of a work dir, and the latest test session of each config."""
    sessions = [read_session(work_dir, osp.join(work_dir, e)) for e in sorted(os.listdir(work_dir))
                if SESSION_DIR.match(e) and osp.isdir(osp.join(work_dir, e))]
    # The latest train session of a work dir is the run (earlier ones were resumed or restarted);
    # the latest test session of each config is one more run.
    latest: Dict[Tuple[str, Optional[str]], Session] = {}
    for s in sessions:
        key = ('train', None) if s.mode == 'train' else ('test', s.config_name)
        latest[key] = s
    runs = []
    for key, s in sorted(latest.items(), key=lambda kv: kv[1].timestamp):
        metrics, status, reason = session_status(s)
        run = Run(work_dir=work_dir, session=s.timestamp, mode=s.mode, config=s.config_name,
                  status=status, reason=reason)
        earlier = [o for o in sessions if o.mode == s.mode and o.timestamp < s.timestamp
                   and (s.mode == 'train' or o.config_name == s.config_name)]
        if earlier:
            run.notes.append(f'{len(earlier)} earlier session(s) superseded')
        if s.cfg is not None:
            info = describe_model(s.cfg)
            run.detector, run.variant = info.detector, info.variant
            run.standard, run.stages, run.backbone = info.standard, info.stages, info.backbone
            run.variant = _projected(s, info) or run.variant
            run.data = evaluation_data(s.cfg, s.mode)
            named = KNOWN_CONFIGS.get(s.config_name or '')
            if named is not None and named != (run.detector, run.variant):
                run.notes.append(f'config {s.config_name} builds {DETECTORS.get(named[0], named[0])}, '
                                 f'{LABELS[named[1]]}, but this run built '
                                 f'{DETECTORS.get(run.detector, run.detector)}, '
                                 f'{LABELS.get(run.variant, run.variant)} (overridden by --cfg-options?)')
            if s.mode == 'train':
                run.notes.extend(_protocol_notes(s, info))
            else:
                run.load_from = s.cfg.get('load_from')
        if metrics is not None:
            run.bbox_ap = metrics.get(BBOX)
            run.segm_ap = metrics.get(SEGM)
        runs.append(run)
    return runs


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------
def _runs_for(runs: Sequence[Run], detector: str, variant: str, any_data: bool) -> List[Run]:
    return [r for r in runs if r.status == 'complete' and r.standard and (any_data or r.on_paper_data)
            and r.detector == detector and r.variant == variant]


def reference_variant(table: str, variant: str) -> Optional[str]:
    """The row a table measures gains from: DK rows from the baseline (DCN + DK from DCN),
    projected evaluations from the full-DCN run they were projected from."""
    if table == 'deformable_kernels' and variant != 'baseline':
        return 'dcn' if variant.startswith('dcn-') else 'baseline'
    if table == 'test_time_projection' and variant != 'dcn':
        return 'dcn'
    return None


def _run_label(run: Run) -> str:
    label = f'{run.work_dir}/{run.session}'
    if run.mode == 'test':
        label += ' (test)'
    return label


def build_records(runs: Sequence[Run], any_data: bool = False) -> List[dict]:
    """Flat records: one per (table row, run), a 'not run' record for rows without a run, then
    finished runs on other data than the papers' (table ``'other_data'``; with ``any_data`` they
    fill the paper rows too, noted), runs that match no row (``'other'``) and runs without final
    metrics (``'unfinished'``)."""
    records = []
    used = set()
    for table in TABLES:
        for row in paper_rows(table):
            matches = _runs_for(runs, row.detector, row.variant, any_data)
            ref_variant = reference_variant(table, row.variant)
            ref = None  # the run this row's gain is measured from
            if ref_variant is not None:
                found = _runs_for(runs, row.detector, ref_variant, any_data)
                ref = found[-1] if found else None
            ref_paper = None
            if ref_variant is not None and row.source == 'dkernel':
                ref_paper = next((p for p in paper_rows(table)
                                  if p.detector == row.detector and p.variant == ref_variant), None)
            for run in matches or [None]:
                rec = dict(table=table, detector=row.detector, variant=row.variant, row=row.name,
                           config=row.config, paper_source=row.source,
                           paper_bbox_ap=row.bbox_ap, paper_segm_ap=row.segm_ap,
                           status='not run', run=None, data=None, reason='', bbox_ap=None, segm_ap=None,
                           bbox_diff=None, segm_diff=None, reference=ref_variant, reference_run=None,
                           bbox_gain=None, segm_gain=None, paper_bbox_gain=None, notes='')
                if ref_paper is not None and row.bbox_ap is not None and ref_paper.bbox_ap is not None:
                    rec['paper_bbox_gain'] = round(row.bbox_ap - ref_paper.bbox_ap, 4)
                if run is not None:
                    used.add(id(run))
                    notes = run.notes + ([] if run.on_paper_data else [f'data: {run.data}, not the paper\'s'])
                    rec.update(status=run.status, run=_run_label(run), data=run.data, reason=run.reason,
                               bbox_ap=run.bbox_ap, segm_ap=run.segm_ap, notes='; '.join(notes))
                    if table == 'revisiting_dcn':
                        if run.bbox_ap is not None and row.bbox_ap is not None:
                            rec['bbox_diff'] = round(run.bbox_ap - row.bbox_ap, 4)
                        if run.segm_ap is not None and row.segm_ap is not None:
                            rec['segm_diff'] = round(run.segm_ap - row.segm_ap, 4)
                    run_ref = ref
                    if run.load_from and ref_variant is not None:
                        # the evaluation of a checkpoint: measure it from the run that trained it
                        ckpt_dir = osp.normpath(osp.dirname(run.load_from))
                        run_ref = next((o for o in _runs_for(runs, row.detector, ref_variant, any_data)
                                        if o.mode == 'train' and osp.normpath(o.work_dir) == ckpt_dir), ref)
                    if run_ref is not None and run_ref is not run and run.bbox_ap is not None \
                            and run_ref.bbox_ap is not None:
                        rec['reference_run'] = _run_label(run_ref)
                        rec['bbox_gain'] = round(run.bbox_ap - run_ref.bbox_ap, 4)
                        if run.segm_ap is not None and run_ref.segm_ap is not None:
                            rec['segm_gain'] = round(run.segm_ap - run_ref.segm_ap, 4)
                records.append(rec)
    for run in runs:
        if id(run) in used:
            continue
        if run.status != 'complete':
            table = 'unfinished'
        else:
            table = 'other' if run.on_paper_data else 'other_data'
        records.append(dict(table=table, detector=run.detector, variant=run.variant,
                            row=_describe_run(run), config=run.config, paper_source=None,
                            paper_bbox_ap=None, paper_segm_ap=None, status=run.status,
                            run=_run_label(run) if run.session else run.work_dir, data=run.data or None,
                            reason=run.reason,
                            bbox_ap=run.bbox_ap, segm_ap=run.segm_ap, bbox_diff=None, segm_diff=None,
                            reference=None, reference_run=None, bbox_gain=None, segm_gain=None,
                            paper_bbox_gain=None, notes='; '.join(run.notes)))
    return records


def _describe_run(run: Run) -> str:
    if run.detector is None:
        return 'unknown model'
    det = DETECTORS.get(run.detector, run.detector)
    var = LABELS.get(run.variant, run.variant)
    where = f' in {run.stages}' if run.stages and run.stages != 'c3-c5' else ''
    backbone = f' ({run.backbone})' if run.backbone and run.backbone != 'ResNet-50' else ''
    return f'{det}, {var}{where}{backbone}'


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(' --- ' for _ in header) + '|']
    out += ['| ' + ' | '.join(str(c).replace('|', '\\|') for c in r) + ' |' for r in rows]
    return '\n'.join(out)


def _cell(rec: dict, key: str) -> str:
    if rec['status'] == 'not run':
        return 'not run'
    return _fmt(rec[key]) or '-'


def _sgn(value: Optional[float]) -> str:
    return '' if value is None else f'{value:+.3f}'


def format_markdown(records: Sequence[dict]) -> str:
    """The three paper tables, then other runs, runs on other data and unfinished runs."""
    parts = []
    tick = lambda flag: '✓' if flag else ''  # noqa: E731
    rd = [r for r in records if r['table'] == 'revisiting_dcn']
    parts.append(f"## {TABLES['revisiting_dcn']}\n\nPaper: {SOURCES['revisiting']}. "
                 'Δ = this run - paper.\n')
    rows = []
    for r in rd:
        marks = TABLE1_MARKS[r['variant']]
        rows.append([DETECTORS[r['detector']], tick(marks[0]), tick(marks[1]), tick(marks[2]),
                     _fmt(r['paper_bbox_ap']), _cell(r, 'bbox_ap'), _sgn(r['bbox_diff']),
                     _fmt(r['paper_segm_ap']) or 'NA',
                     (_cell(r, 'segm_ap') if r['detector'] == 'mask-rcnn' else 'NA'),
                     _sgn(r['segm_diff']), r['run'] or '', r['notes']])
    parts.append(_md_table(['detector', 'baseline', 'd_f', 'd_k', 'AP bbox (paper)', 'AP bbox (run)',
                            'Δ bbox', 'AP segm (paper)', 'AP segm (run)', 'Δ segm', 'run', 'notes'], rows))

    dk = [r for r in records if r['table'] == 'deformable_kernels']
    parts.append(f"\n## {TABLES['deformable_kernels']}\n\nPaper: {SOURCES['dkernel']} - another "
                 'backbone and split, so compare gains, not APs. '
                 'Gain = this run - the run of the row named under "gain over".\n')
    rows = [[DETECTORS[r['detector']], LABELS[r['variant']], LABELS[r['reference']] if r['reference'] else '',
             _cell(r, 'bbox_ap'), _sgn(r['bbox_gain']),
             (_cell(r, 'segm_ap') if r['detector'] == 'mask-rcnn' else 'NA'), _sgn(r['segm_gain']),
             _fmt(r['paper_bbox_ap']) or '-', _sgn(r['paper_bbox_gain']), r['run'] or '', r['notes']]
            for r in dk]
    parts.append(_md_table(['detector', '3x3 conv in c3-c5', 'gain over', 'AP bbox (run)', 'gain',
                            'AP segm (run)', 'gain', 'AP bbox (DK paper, R-50-DW, test-dev)', 'paper gain',
                            'run', 'notes'], rows))

    tp = [r for r in records if r['table'] == 'test_time_projection']
    parts.append(f"\n## {TABLES['test_time_projection']}\n\nNeither paper ran this. "
                 'Change = this evaluation - the full-DCN run it was projected from.\n')
    rows = [[DETECTORS[r['detector']], LABELS[r['variant']], _fmt(r['paper_bbox_ap']) or '-',
             _cell(r, 'bbox_ap'), _sgn(r['bbox_gain']),
             (_fmt(r['paper_segm_ap']) or '-') if r['detector'] == 'mask-rcnn' else 'NA',
             (_cell(r, 'segm_ap') if r['detector'] == 'mask-rcnn' else 'NA'), _sgn(r['segm_gain']),
             r['run'] or '', r['notes']] for r in tp]
    parts.append(_md_table(['detector', 'offsets', 'AP bbox (paper)', 'AP bbox (run)', 'change',
                            'AP segm (paper)', 'AP segm (run)', 'change', 'run', 'notes'], rows))

    other = [r for r in records if r['table'] == 'other']
    if other:
        parts.append('\n## Other finished runs (match no table row)\n')
        parts.append(_md_table(['model', 'config', 'AP bbox', 'AP segm', 'run', 'notes'],
                               [[r['row'], r['config'] or '', _fmt(r['bbox_ap']), _fmt(r['segm_ap']),
                                 r['run'], r['notes']] for r in other]))
    other_data = [r for r in records if r['table'] == 'other_data']
    if other_data:
        parts.append("\n## Runs on other data than the papers' (not compared with their numbers)\n")
        parts.append(_md_table(['model', 'data', 'config', 'AP bbox', 'AP segm', 'run', 'notes'],
                               [[r['row'], r['data'], r['config'] or '', _fmt(r['bbox_ap']), _fmt(r['segm_ap']),
                                 r['run'], r['notes']] for r in other_data]))
    bad = [r for r in records if r['table'] == 'unfinished'] + \
          [r for r in records if r['table'] in TABLES and r['status'] not in ('complete', 'not run')]
    if bad:
        parts.append('\n## Incomplete or failed runs\n')
        parts.append(_md_table(['run', 'config', 'model', 'status', 'reason'],
                               [[r['run'], r['config'] or '', r['row'], r['status'], r['reason']]
                                for r in bad]))
    return '\n'.join(parts) + '\n'


FIELDS = ('table', 'detector', 'variant', 'row', 'config', 'status', 'run', 'data', 'reason', 'bbox_ap', 'segm_ap',
          'paper_bbox_ap', 'paper_segm_ap', 'bbox_diff', 'segm_diff', 'paper_source', 'reference',
          'reference_run', 'bbox_gain', 'segm_gain', 'paper_bbox_gain', 'notes')


def format_csv(records: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for r in records:
        writer.writerow({k: ('' if r.get(k) is None else r.get(k)) for k in FIELDS})
    return buf.getvalue()


def format_json(records: Sequence[dict]) -> str:
    return json.dumps({'sources': SOURCES, 'records': list(records)}, indent=2) + '\n'


FORMATS = {'markdown': format_markdown, 'csv': format_csv, 'json': format_json}


def collect_results(paths: Sequence[str], any_data: bool = False) -> List[dict]:
    """The records (see :func:`build_records`) of every run in the work dirs at ``paths``."""
    return build_records(collect_runs(paths), any_data)
