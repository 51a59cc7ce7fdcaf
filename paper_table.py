"""The paper's tables from finished runs: mIoU per labeled fraction and method, beside the paper's.

Usage:
    python paper_table.py [FOLDER ...] [--csv FILE] [--plot FILE.png] [--protocol NAME]

Reads every `logs/<exp-name>/results.json` found under each working folder (default `.`, searched
recursively, hidden folders skipped) and prints, per selection protocol and dataset, the mIoU
table of the paper (rows: methods; columns: labeled fractions 1/S, `full` for all labels) with
mean ± sample standard deviation over the random splits found, their number, the paper's value and
ours - paper, then a per-class IoU table.

Every number says where it came from, because a checkpoint chosen on the list it is scored on
reads higher than one chosen elsewhere. Each run gives entries under named protocols:
  - a training run (state 2 supervised, state 1 DST-CBC): `best on <val_list>` (its best
    validation scores: the paper's protocol when the list is `val`) and `last step on <val_list>`
    (the scores at the last step, no selection);
  - an evaluation (state 3): `selected on <list>, reported on <list>`, plus ` (multi-scale)`,
    ` (flip)`, ` (sliding window)` when the evaluation used them.
The paper's numbers were reported on `val`, so they are compared only with protocols reporting on
`val`. Pseudo-labeling runs (state 0) and self-training rounds that do not finish the schedule
(`final: false`) are skipped. So is every file the tables cannot use, each with a note on stderr
naming it and why, the tables being made from the other runs: one that cannot be read or parsed
(cut off, not UTF-8), is not a JSON object, lacks a field or holds one of the wrong type (a null
split, a string mIoU, ...).

One cell holds one run per split. Two results of one cell and split are the same run (a copy, or
the same command run again) when every setting that changes a run's numbers and both record is
equal: the training flags a `--resume` may not change (data root, lr, gamma, epochs, backbone,
starting checkpoint, seed, ...) or an evaluation's checkpoint, data and scoring, read from the
settings.json beside results.json, else from what results.json records (network, gamma, rounds,
evaluated checkpoint). The same run found twice counts once, the newest file (then the path)
winning. Two different runs are a conflict no rule can settle: a note names both files and the
first setting that differs, and that split is left out of the cell (both runs), so that no mean
silently mixes or picks between them; move one run's folder away to count the other.
"""
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from utils.files import atomic_path
from utils.flags import OneLineParser

PAPER_PROTOCOL = 'best on val'
DATASET_NAMES = {'voc': 'VOC', 'city': 'Cityscapes'}
METHOD_ORDER = ('supervised', 'dst-cbc')
METHOD_NAMES = {'supervised': 'supervised', 'dst-cbc': 'DST-CBC'}
METHOD_COLOURS = {'supervised': 'tab:blue', 'dst-cbc': 'tab:orange', 'unknown': 'tab:gray'}
# The labeled fractions of the paper's tables, as the `split` of results.json ('1' = all labels).
PAPER_SPLITS = {'voc': ('106', '50', '20', '8', '4', '1'), 'city': ('30', '8', '4', '1')}
# mIoU % of the paper (DeepLabV2-ResNet101, COCO init, mean of 3 splits, selected and reported
# on val). DST-CBC has no full-label number.
PAPER_MIOU = {
    ('voc', 'supervised'): {'106': 45.7, '50': 55.4, '20': 62.2, '8': 66.2, '4': 68.7, '1': 73.5},
    ('voc', 'dst-cbc'): {'106': 61.6, '50': 65.5, '20': 69.3, '8': 70.7, '4': 71.8},
    ('city', 'supervised'): {'30': 45.5, '8': 56.7, '4': 61.1, '1': 66.9},
    ('city', 'dst-cbc'): {'30': 48.7, '8': 60.5, '4': 64.4},
}
# What changes a run's numbers, as settings.json records it (the cell's own key, state, dataset,
# split and sets_id, apart). A training run: the flags a --resume may not change
# (utils/context.py RUN_DEFINING_FLAGS, kept equal by a test), but --pseudo-dir, which only
# says where labels are written. An evaluation: its checkpoint, its data, its network and how it
# scores.
TRAINING_SETTINGS = (
    'data_root_resolved', 'valtiny', 'backbone', 'head_branches', 'coco', 'from_scratch',
    'mixed_precision', 'precision', 'continue_from', 'batch_size', 'lr', 'weight_decay', 'init_epochs',
    'st_epochs', 'st_lr', 'iters', 'round', 'init_label_ratio', 'det_label_ratio', 'label_ratio',
    'gamma', 'val_num_steps', 'no_aug', 'crop_size', 'eval_size', 'seed', 'sync_bn', 'frozen_bn')
EVALUATION_SETTINGS = (
    'data_root_resolved', 'continue_from', 'valtiny', 'backbone', 'head_branches', 'coco',
    'mixed_precision', 'precision', 'eval_size', 'full_resolution', 'scales', 'flip', 'sliding_window',
    'window_stride')
JSON_KINDS = {list: 'array', str: 'string', int: 'number', float: 'number', bool: 'boolean',
              type(None): 'null'}
EXIT_NO_RUNS = 1
EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 4   # as main.py's OutputError


class InvalidResults(Exception):
    """An argument the user must fix (a folder that is not there): main prints
    `error: <message>` and exits 2."""


class SkippedResults(Exception):
    """A results.json the tables cannot use, and why (cut off, not JSON, a field of the wrong
    type): skipped with a note naming it, and the tables made from the other runs. One broken
    file among many runs must neither cost the whole table nor pass unnoticed."""
    explanation = ''


class UnknownShape(SkippedResults):
    """A results.json that is not a finished training or evaluation run of the known format
    (an older format, a JSON array, a run still missing a field)."""
    explanation = 'not a results file this script knows'

@dataclass(frozen=True)
class Entry:
    """One number of one run under one protocol; mIoU and IoUs in percent, None = undefined."""
    protocol: str
    reported_on: str
    dataset: str
    split: str
    method: str
    sets_id: int
    miou: float
    iou: dict
    class_names: tuple
    path: Path
    mtime: float
    settings: dict = field(default_factory=dict)   # what changes its numbers (see run_settings)

    @property
    def key(self):
        """Entries with the same key claim one split of one cell: one run found twice, or a
        conflict between different runs (see `one_run_per_split`)."""
        return (self.protocol, self.dataset, self.split, self.method, self.sets_id)


@dataclass
class Cell:
    """The runs of one (protocol, dataset, fraction, method): one cell of a table."""
    protocol: str
    reported_on: str
    dataset: str
    split: str
    method: str
    sets_ids: tuple = ()
    mious: tuple = ()
    class_names: tuple = ()
    class_iou: dict = field(default_factory=dict)   # class -> mean IoU % or None (n/a)

    @property
    def n(self):
        return len(self.mious)

    @property
    def mean(self):
        return statistics.fmean(self.mious) if self.mious else None

    @property
    def std(self):
        """Sample standard deviation (ddof=1): undefined for fewer than two splits."""
        return statistics.stdev(self.mious) if len(self.mious) >= 2 else None

    @property
    def paper(self):
        """The paper's number, only where it is comparable: it was reported on val."""
        if self.reported_on != 'val':
            return None
        return PAPER_MIOU.get((self.dataset, self.method), {}).get(self.split)

    @property
    def diff(self):
        if self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper


# ---------------------------------------------------------------- reading the runs

def find_results(folder):
    """Every logs/<run>/results.json under `folder`, at any depth.

    Hidden folders (.git, .venv) are not entered, nor the run folders themselves: they hold
    pseudo labels by the thousand and never another run.
    """
    found = []
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith('.'))
        if os.path.basename(dirpath) == 'logs':
            for run in dirnames:
                path = Path(dirpath, run, 'results.json')
                if path.is_file():
                    found.append(path)
            dirnames[:] = []
    return found


def read_json(path):
    """The parsed file, or SkippedResults saying why it cannot be: a damaged file must not pass
    unnoticed."""
    try:
        with open(path, encoding='utf-8') as file:
            return json.load(file)
    except OSError as error:
        raise SkippedResults(f'cannot read: {error.strerror or error}') from None
    except UnicodeDecodeError:
        raise SkippedResults('not UTF-8 text') from None
    except json.JSONDecodeError as error:
        cut = ' (the file ends there: cut off?)' if error.pos >= len(error.doc.rstrip()) else ''
        raise SkippedResults(f'invalid JSON: {error.msg} at line {error.lineno} column '
                             f'{error.colno}{cut}') from None


def is_kind(value, kinds):
    """isinstance, but a JSON true/false is no number: only a bool where `kinds` has bool."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def shown(value, limit=60):
    """A value as it reads in the JSON file, cut short for a one-line note."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def get(data, name, kinds, nullable=False, items=None, required=True, where=''):
    """data[name] checked against `kinds` (a list's items against `items`): the one place a
    field of a results file is checked.

    Missing -> UnknownShape (a format this script does not know; None when not `required`);
    present with the wrong type -> SkippedResults (a broken file). Either way the file is left
    out with a note naming it and the field, never guessed at: a guess would put a wrong number
    in a table, and stopping would cost the table of every other run. `where` names the object
    holding the field (`protocol.`) in the note.
    """
    if name not in data:
        if not required:
            return None
        raise UnknownShape(f"no '{where}{name}'")
    value = data[name]
    if value is None and nullable:
        return None
    if not is_kind(value, kinds) or (items is not None
                                     and not all(is_kind(item, items) for item in value)):
        expected = ' or '.join(kind.__name__ for kind in kinds)
        if items is not None:
            expected += ' of ' + ' or '.join(kind.__name__ for kind in items)
        raise SkippedResults(f"'{where}{name}' is {shown(value)}, expected {expected}"
                             + (' or null' if nullable else ''))
    return value


def fraction_of_one(value, name):
    """A score of results.json (0..1) in percent; None stays None (undefined, never 0)."""
    if value is None:
        return None
    if not is_kind(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise SkippedResults(f"'{name}' is {shown(value)}, expected a number in 0..1 or null")
    return 100.0 * value


def class_ious(data, name):
    """Per-class IoU % from the scores dict data[name] ({'iou': {class: value or null}}); {}
    when it or its 'iou' is absent or null."""
    scores = get(data, name, (dict,), nullable=True, required=False)
    if scores is None:
        return {}
    iou = get(scores, 'iou', (dict,), nullable=True, required=False, where=f'{name}.') or {}
    return {cls: fraction_of_one(value, f'{name}.iou.{cls}') for cls, value in iou.items()}


def evaluation_protocol(data):
    """The protocol name of a state-3 evaluation: where its checkpoint was chosen and scored, and
    the test-time tricks that raise the number (multi-scale, flip, sliding window)."""
    selected = get(data, 'selected_on', (str,), nullable=True) or 'unknown'
    reported = get(data, 'reported_on', (str,))
    settings = get(data, 'protocol', (dict,))
    scales = get(settings, 'scales', (list,), items=(int, float), where='protocol.')
    if not scales:
        raise SkippedResults("'protocol.scales' is [], expected at least one scale")
    name = f'selected on {selected}, reported on {reported}'
    if [float(scale) for scale in scales] != [1.0]:
        name += ' (multi-scale)'
    if get(settings, 'flip', (bool,), where='protocol.'):
        name += ' (flip)'
    if settings.get('sliding_window') is not None:
        name += ' (sliding window)'
    return name, reported

def settings_in_results(data):
    """The settings that change a run's numbers which results.json itself records: the network,
    DST-CBC's gamma and rounds, the checkpoint an evaluation scored."""
    found = {}
    architecture = data.get('architecture')
    if isinstance(architecture, dict):
        found.update((name, architecture[name]) for name in ('backbone', 'head_branches')
                     if name in architecture)
    if data['state'] == 1:
        found.update((name, data[name]) for name in ('gamma', 'iters', 'round') if name in data)
    if data['state'] == 3:
        for field_name, name in (('checkpoint', 'continue_from'),
                                 ('source_experiment', 'source_experiment')):
            if field_name in data:
                found[name] = data[field_name]
    return found


def run_settings(data, settings):
    """What defines the run of a results.json: the settings that change its numbers, from its
    settings.json (`settings`, {} when there is none) where recorded, else from the results."""
    names = EVALUATION_SETTINGS if data['state'] == 3 else TRAINING_SETTINGS
    found = settings_in_results(data)
    found.update((name, settings[name]) for name in names if name in settings)
    return found


def entries_from_results(data, path, mtime=0.0, settings=None):
    """The entries of one results.json: two per finished training run, one per evaluation, none
    for anything else (pseudo labels, unfinished self-training chains). `settings` is the run's
    settings.json, if any. A file this cannot use raises SkippedResults (UnknownShape for a
    format it does not know, a JSON array included) saying why."""
    if not isinstance(data, dict):
        raise UnknownShape(f'a JSON {JSON_KINDS.get(type(data), "value")}, not an object')
    state = get(data, 'state', (int,))
    if state not in (0, 1, 2, 3):
        raise UnknownShape(f"'state' is {state}, not 0, 1, 2 or 3")
    if state == 0 or (state == 1 and not get(data, 'final', (bool,))):
        return []
    dataset = get(data, 'dataset', (str,))
    split = str(get(data, 'split', (str, int)))
    sets_id = get(data, 'sets_id', (int,))
    method = get(data, 'method', (str,))
    class_names = tuple(get(data, 'class_names', (list,), items=(str,)))
    common = dict(dataset=dataset, split=split, method=method, sets_id=sets_id,
                  class_names=class_names, path=Path(path), mtime=mtime,
                  settings=run_settings(data, settings or {}))
    if state == 3:
        protocol, reported = evaluation_protocol(data)
        numbers = [(protocol, reported, 'miou', 'scores')]
    else:
        val_list = get(data, 'val_list', (str,))
        numbers = [(f'best on {val_list}', val_list, 'best_miou', 'best_scores')]
        if 'last_miou' in data:   # older files lack it: their best still counts
            numbers.append((f'last step on {val_list}', val_list, 'last_miou', 'last_scores'))
    # Every field is checked before any entry is made: a file counts whole or not at all.
    found = [(protocol, reported,
              fraction_of_one(get(data, miou_name, (int, float), nullable=True), miou_name),
              class_ious(data, scores_name))
             for protocol, reported, miou_name, scores_name in numbers]
    return [Entry(protocol=protocol, reported_on=reported, miou=miou, iou=iou, **common)
            for protocol, reported, miou, iou in found
            if miou is not None]   # None: never validated, no number to put in a table


def results_paths(folders):
    """Every results.json under `folders`, each file once however often it is reached."""
    paths, seen = [], set()
    for folder in folders:
        if not os.path.isdir(folder):
            raise InvalidResults(f'{folder}: no such folder')
        for path in find_results(folder):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append(path)
    return paths


def settings_beside(path, results, notes):
    """The settings.json of the run whose results.json is `path` ({} when there is none).

    A settings.json that cannot be read, or that another run of the same name wrote since (its
    state or experiment differs), would compare the wrong run: it is set aside with a note.
    """
    settings_path = Path(path).parent / 'settings.json'
    if not settings_path.is_file():
        return {}
    try:
        settings = read_json(settings_path)
    except SkippedResults as error:
        notes.append(f'note: {settings_path}: {error}; the run of {path} is compared by its '
                     'results alone')
        return {}
    if not isinstance(settings, dict):
        notes.append(f'note: {settings_path} is not a JSON object; the run of {path} is '
                     'compared by its results alone')
        return {}
    for name, results_name in (('state', 'state'), ('exp_name', 'experiment')):
        if name in settings and results_name in results \
                and settings[name] != results[results_name]:
            notes.append(f'note: {settings_path} is of another run ({name} '
                         f'{json.dumps(settings[name])}, results {json.dumps(results[results_name])}); '
                         f'the run of {path} is compared by its results alone')
            return {}
    return settings


def skipped_note(path, reason):
    """The note for a results file left out: the file, why, and what that means."""
    note = f'note: skipped {path}: {reason}'
    return note + (f' ({reason.explanation})' if reason.explanation else '')


def read_entries(path, notes):
    """The entries of one results.json; [] with a note naming it and why when it cannot be used
    (unreadable, not JSON, cut off, a field missing or of the wrong type: see SkippedResults),
    so that the tables are still made from every other run."""
    try:
        mtime = path.stat().st_mtime
        data = read_json(path)
        settings = settings_beside(path, data, notes) if isinstance(data, dict) else {}
        return entries_from_results(data, path, mtime, settings)
    except OSError as error:   # the file vanished or became unreadable after it was found
        notes.append(skipped_note(path, SkippedResults(f'cannot read: {error.strerror or error}')))
    except SkippedResults as reason:
        notes.append(skipped_note(path, reason))
    return []


def setting_name(name):
    """A setting as the user knows it: its flag, or the results field it came from."""
    if name == 'data_root_resolved':
        return '--data-root'
    if name == 'source_experiment':
        return 'source_experiment'
    return '--' + name.replace('_', '-')


def first_difference(one, other):
    """The first setting both runs record with different values, as text, or None."""
    for name in one:
        if name in other and one[name] != other[name]:
            return f'{setting_name(name)} ({json.dumps(one[name])} vs {json.dumps(other[name])})'
    return None


def cell_name(entry):
    dataset = DATASET_NAMES.get(entry.dataset, entry.dataset)
    method = METHOD_NAMES.get(entry.method, entry.method)
    return f'{dataset} {fraction_label(entry.split)} {method}, split {entry.sets_id}'


def add_note(notes, note):
    """A note once, though the two protocols of a training run would give it twice."""
    if note not in notes:
        notes.append(note)


def one_run_per_split(entries, notes):
    """At most one entry per key (protocol, dataset, fraction, method, split).

    Entries recording the same settings are one run found twice (a copied folder, a command run
    again): the newest file wins (then the path, for equal times), with a note. Entries that
    differ in a setting are different runs claiming one split: no rule can say which the table
    means, so neither is kept, and the note names both files and the setting.
    """
    kept, conflicting = {}, set()
    for entry in sorted(entries, key=lambda entry: (entry.mtime, str(entry.path))):
        older = kept.get(entry.key)
        kept[entry.key] = entry
        if older is None:
            continue
        difference = first_difference(older.settings, entry.settings)
        if difference is None:
            add_note(notes, f'note: the same run in {entry.path} and {older.path}: '
                            f'using the newer, {entry.path}')
        else:
            conflicting.add(entry.key)
            add_note(notes, f'note: different runs for {cell_name(entry)}: {older.path} and '
                            f'{entry.path} differ in {difference}; both are left out of the '
                            'tables (move one away to count the other)')
    return [entry for key, entry in kept.items() if key not in conflicting]


def collect_runs(folders, notes=None):
    """Every entry under `folders`, one per run and protocol (see `one_run_per_split`).

    Skipped files (damaged ones too), runs found twice and different runs claiming one split go
    into `notes` (printed on stderr by main). Raises InvalidResults for a missing folder.
    """
    notes = [] if notes is None else notes
    entries = []
    for path in results_paths(folders):
        entries.extend(read_entries(path, notes))
    return one_run_per_split(entries, notes)


# ---------------------------------------------------------------- summarising

def split_order(split):
    """Columns from the smallest labeled fraction to the full set; non-numbers last."""
    try:
        value = float(split)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1:   # not a fraction 1/S: a column at the end
        return (1, 0.0, split)
    return (0, -value, split)


def fraction_label(split):
    """'106' -> '1/106', '1' -> 'full' (the table's column names)."""
    if split == '1':
        return 'full'
    return f'1/{split}' if split_order(split)[0] == 0 else split


def method_order(method):
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def dataset_order(dataset):
    """VOC, Cityscapes, then any other dataset by name."""
    known = list(DATASET_NAMES)
    return (known.index(dataset) if dataset in known else len(known), dataset)


def protocol_order(protocol):
    """The paper's protocol first, then the rest alphabetically."""
    return (protocol != PAPER_PROTOCOL, protocol)


def merged_names(name_lists):
    """The names of all lists, each once, in order of first appearance: the runs' class_names
    order, then any class only an IoU dict names."""
    names = {}
    for names_of_one in name_lists:
        for name in names_of_one:
            names.setdefault(name, None)
    return tuple(names)


def summarise(entries):
    """One Cell per (protocol, dataset, fraction, method) found, splits in sets_id order."""
    groups = {}
    for entry in entries:
        key = (entry.protocol, entry.dataset, entry.split, entry.method)
        groups.setdefault(key, []).append(entry)
    cells = []
    for (protocol, dataset, split, method), group in groups.items():
        group.sort(key=lambda entry: entry.sets_id)
        class_names = merged_names(list(entry.class_names) + list(entry.iou) for entry in group)
        class_iou = {}
        for name in class_names:
            values = [entry.iou.get(name) for entry in group]
            values = [value for value in values if value is not None]   # null is missing, not 0
            class_iou[name] = statistics.fmean(values) if values else None
        cells.append(Cell(protocol=protocol, reported_on=group[0].reported_on, dataset=dataset,
                          split=split, method=method,
                          sets_ids=tuple(entry.sets_id for entry in group),
                          mious=tuple(entry.miou for entry in group),
                          class_names=class_names, class_iou=class_iou))
    cells.sort(key=lambda cell: (protocol_order(cell.protocol), dataset_order(cell.dataset),
                                 split_order(cell.split), method_order(cell.method)))
    return cells


def protocols_of(cells):
    return sorted({cell.protocol for cell in cells}, key=protocol_order)


def datasets_of(cells, protocol):
    """Datasets with a run under `protocol`: VOC, Cityscapes, then any other."""
    found = {cell.dataset for cell in cells if cell.protocol == protocol}
    return sorted(found, key=dataset_order)


def table_grid(cells, protocol, dataset):
    """The rows (methods) and columns (fractions) of one table, and its cells by position.

    The paper's rows and columns are always there, so a run that is absent shows as `missing`
    instead of vanishing; fractions the paper lacks follow its own.
    """
    mine = [cell for cell in cells if cell.protocol == protocol and cell.dataset == dataset]
    splits = list(PAPER_SPLITS.get(dataset, ()))
    splits += sorted({cell.split for cell in mine} - set(splits), key=split_order)
    methods = sorted(set(METHOD_ORDER) | {cell.method for cell in mine}, key=method_order)
    by_position = {(cell.method, cell.split): cell for cell in mine}
    reported = reported_on(cells, protocol)
    grid = {}
    for method in methods:
        for split in splits:
            missing = Cell(protocol=protocol, reported_on=reported, dataset=dataset, split=split,
                           method=method)
            grid[method, split] = by_position.get((method, split), missing)
    return methods, splits, grid


# ---------------------------------------------------------------- text tables

def percent(value, signed=False):
    """A percentage with 2 decimals; '' when undefined (never 0)."""
    if value is None:
        return ''
    return f'{value:+.2f}' if signed else f'{value:.2f}'


def ours_text(cell):
    if cell.n == 0:
        return 'missing'
    if cell.n == 1:
        return f'{cell.mean:.2f} (n=1)'
    return f'{cell.mean:.2f} ± {cell.std:.2f} (n={cell.n})'


def aligned(rows):
    """Left-aligned columns at least two spaces apart (so a cell never contains two spaces)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(text.ljust(width) for text, width in zip(row, widths)).rstrip()
                     for row in rows)


def miou_table(cells, protocol, dataset):
    """The paper's table for one dataset: per method, ours / paper / ours - paper."""
    methods, splits, grid = table_grid(cells, protocol, dataset)
    rows = [[DATASET_NAMES.get(dataset, dataset)] + [fraction_label(split) for split in splits]]
    for method in methods:
        row = [grid[method, split] for split in splits]
        rows.append([METHOD_NAMES.get(method, method)] + [ours_text(cell) for cell in row])
        rows.append(['  paper'] + [f'{cell.paper:.1f}' if cell.paper is not None else '-'
                                   for cell in row])
        rows.append(['  ours - paper'] + [percent(cell.diff, signed=True) or '-' for cell in row])
    return aligned(rows)


def class_table(cells, protocol, dataset):
    """Mean IoU % per class over the splits found, one column per (fraction, method) present."""
    mine = [cell for cell in cells if cell.protocol == protocol and cell.dataset == dataset]
    mine.sort(key=lambda cell: (split_order(cell.split), method_order(cell.method)))
    names = merged_names(cell.class_names for cell in mine)
    rows = [['class'] + [fraction_label(cell.split) for cell in mine],
            [''] + [METHOD_NAMES.get(cell.method, cell.method) for cell in mine]]
    for name in names:
        rows.append([name] + [percent(cell.class_iou.get(name)) or 'n/a' for cell in mine])
    return aligned(rows)


def reported_on(cells, protocol):
    """The list a protocol's numbers were scored on (val or valtiny)."""
    return next(cell.reported_on for cell in cells if cell.protocol == protocol)


def protocol_heading(protocol, cells):
    """The protocol's name and what it means for comparing with the paper."""
    reported = reported_on(cells, protocol)
    if protocol == PAPER_PROTOCOL:
        meaning = "The paper's protocol: the best checkpoint, selected and reported on val."
    elif protocol.startswith('last step on'):
        meaning = 'No selection: the scores at the last training step.'
    elif reported == 'val':
        meaning = 'Reported on val, as the paper.'
    else:
        meaning = f"Reported on {reported}: not comparable with the paper's val numbers."
    return f'=== {protocol} ===\n{meaning}'


def format_tables(cells, protocol=None):
    """All tables as text: per protocol (or only `protocol`), per dataset, mIoU then per class."""
    blocks = []
    for name in protocols_of(cells):
        if protocol is not None and name != protocol:
            continue
        blocks.append(protocol_heading(name, cells))
        for dataset in datasets_of(cells, name):
            label = DATASET_NAMES.get(dataset, dataset)
            blocks.append(f'{label} mIoU (%): mean ± sample std over splits (n = splits)\n'
                          + miou_table(cells, name, dataset))
            blocks.append(f'{label} per-class IoU (%): mean over splits\n'
                          + class_table(cells, name, dataset))
    return '\n\n'.join(blocks) + '\n'


# ---------------------------------------------------------------- files

def write_atomically(path, write):
    """Call write(temporary_path), then rename over `path`: a reader never sees half a file, and
    the file has the usual permissions (0o666 less the umask; mkstemp's 0600 hid the table from a
    shared group)."""
    with atomic_path(path) as temporary:
        write(temporary)


def csv_rows(cells, protocol=None):
    """The rows of the CSV: one per table cell (missing ones too, with their paper value)."""
    class_names = merged_names(cell.class_names for cell in cells
                               if protocol is None or cell.protocol == protocol)
    header = ['protocol', 'dataset', 'fraction', 'method', 'n_splits', 'sets_ids', 'mean_miou',
              'std_miou', 'paper_miou', 'diff'] + [f'iou_{name}' for name in class_names]
    rows = [header]
    for name in protocols_of(cells):
        if protocol is not None and name != protocol:
            continue
        for dataset in datasets_of(cells, name):
            methods, splits, grid = table_grid(cells, name, dataset)
            for split in splits:
                for method in methods:
                    cell = grid[method, split]
                    rows.append([name, dataset, fraction_label(split), method, str(cell.n),
                                 ' '.join(str(i) for i in cell.sets_ids), percent(cell.mean),
                                 percent(cell.std), percent(cell.paper), percent(cell.diff)]
                                + [percent(cell.class_iou.get(cls)) for cls in class_names])
    return rows


def write_csv(cells, path, protocol=None):
    """The tables as CSV at `path`, written atomically."""
    text = io.StringIO()
    csv.writer(text, lineterminator='\n').writerows(csv_rows(cells, protocol))

    def write(temporary):
        with open(temporary, 'w', encoding='utf-8', newline='') as file:
            file.write(text.getvalue())
    write_atomically(path, write)


def plot_protocol(cells, protocol=None):
    """The protocol to plot: the one asked for, else the paper's, else the first found."""
    found = protocols_of(cells)
    return protocol if protocol is not None else (found[0] if found else None)


def plot(cells, path, protocol=None):
    """mIoU against the labeled fraction (log x), ours with ± std bars beside the paper's dashed
    lines, one subplot per dataset, written atomically as PNG.

    Uses a Figure with the Agg canvas directly (not pyplot): no global state, no display needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    protocol = plot_protocol(cells, protocol)
    datasets = datasets_of(cells, protocol)
    figure = Figure(figsize=(6 * max(len(datasets), 1), 4.5), layout='constrained')
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(len(datasets), 1), squeeze=False)[0]
    for axis, dataset in zip(axes, datasets):
        methods, splits, grid = table_grid(cells, protocol, dataset)
        for index, method in enumerate(methods):
            colour = METHOD_COLOURS.get(method, f'C{index + 2}')
            label = METHOD_NAMES.get(method, method)
            ours = [(1 / float(split), grid[method, split]) for split in splits
                    if grid[method, split].n and split_order(split)[0] == 0]
            if ours:
                axis.errorbar([x for x, _ in ours], [cell.mean for _, cell in ours],
                              yerr=[cell.std or 0.0 for _, cell in ours], color=colour,
                              marker='o', capsize=3, label=f'{label} (ours)')
            paper = sorted((1 / float(split), value) for split, value
                           in PAPER_MIOU.get((dataset, method), {}).items())
            if paper and reported_on(cells, protocol) == 'val':
                axis.plot([x for x, _ in paper], [y for _, y in paper], linestyle='--',
                          marker='x', color=colour, label=f'{label} (paper)')
        ticks = [split for split in splits if split_order(split)[0] == 0]
        axis.set_xscale('log')
        axis.set_xticks([1 / float(split) for split in ticks],
                        [fraction_label(split) for split in ticks])
        axis.minorticks_off()
        axis.set_xlabel('labeled fraction')
        axis.set_ylabel('mIoU (%)')
        axis.set_title(DATASET_NAMES.get(dataset, dataset))
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize='small')
    figure.suptitle(f'mIoU, {protocol}')
    write_atomically(path, lambda temporary: figure.savefig(temporary, format='png', dpi=100))


# ---------------------------------------------------------------- command line

def parse_args(argv):
    parser = OneLineParser(prog='paper_table.py', description=__doc__.splitlines()[0])
    parser.add_argument('folders', nargs='*', default=['.'], metavar='FOLDER',
                        help='working folders holding logs/<exp-name>/results.json (default .)')
    parser.add_argument('--csv', default=None, metavar='FILE', help='also write the tables as CSV')
    parser.add_argument('--plot', default=None, metavar='FILE.png',
                        help="plot mIoU against the labeled fraction beside the paper's")
    parser.add_argument('--protocol', default=None, metavar='NAME',
                        help=f"only this protocol, e.g. '{PAPER_PROTOCOL}' or "
                             "'selected on valtiny, reported on val' (default: all)")
    return parser.parse_args(argv)


def main(argv=None):
    """Print the tables, write the CSV and plot if asked; the exit status (0, 1 no runs, 2 bad
    input, 4 a file could not be written)."""
    args = parse_args(argv)
    notes = []
    try:
        entries = collect_runs(args.folders, notes)
    except InvalidResults as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_BAD_INPUT
    for note in notes:
        print(note, file=sys.stderr)
    cells = summarise(entries)
    if not cells:
        print(f"error: no finished run (results.json of state 1, 2 or 3) under "
              f"{', '.join(args.folders)}", file=sys.stderr)
        return EXIT_NO_RUNS
    found = protocols_of(cells)
    if args.protocol is not None and args.protocol not in found:
        print(f"error: no run under protocol '{args.protocol}'; found: "
              + ', '.join(f"'{name}'" for name in found), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_tables(cells, args.protocol), end='')
    for path, write in ((args.csv, lambda: write_csv(cells, args.csv, args.protocol)),
                        (args.plot, lambda: plot(cells, args.plot, args.protocol))):
        if path is None:
            continue
        try:
            write()
        except OSError as error:
            print(f'error: cannot write {path}: {error.strerror or error}', file=sys.stderr)
            return EXIT_WRITE_FAILED
    return 0


if __name__ == '__main__':
    sys.exit(main())
