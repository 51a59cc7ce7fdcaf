"""paper_table.py: the paper's tables from hand-written results.json files.

Every expected number below is worked out by hand from the literal scores written in the files
(mIoU 0..1 in the files, percent in the tables), not by calling the code under test.
"""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import paper_table

REPO_ROOT = Path(__file__).resolve().parents[1]
VOC_CLASSES = ['background', 'aeroplane', 'bicycle']
CITY_CLASSES = ['road', 'sidewalk']


def scores(miou, iou):
    """A scores dict of the schema; `iou` maps class -> value or None (absent class)."""
    present = [name for name, value in iou.items() if value is not None]
    return {'pixel_accuracy': 0.9, 'miou': miou, 'iou': iou, 'present_classes': present,
            'absent_classes': [name for name in iou if name not in present],
            'num_pixels': 1000}


def training_run(state, dataset, split, sets_id, best, last, iou=None, val_list='val',
                 final=True):
    """results.json of a state-2 (supervised) or state-1 (DST-CBC) run."""
    classes = VOC_CLASSES if dataset == 'voc' else CITY_CLASSES
    iou = iou or {name: 0.5 for name in classes}
    data = {'state': state, 'experiment': f'run_{dataset}_{split}-{sets_id}', 'dataset': dataset,
            'split': split, 'sets_id': sets_id, 'class_names': classes, 'world_size': 1,
            'method': 'supervised' if state == 2 else 'dst-cbc', 'val_list': val_list,
            'best_miou': best, 'best_scores': scores(best, iou),
            'last_miou': last, 'last_scores': scores(last, iou)}
    if state == 1:
        data.update(final=final, round=None if final else 2, iters=5, rounds=[])
    return data


def evaluation_run(miou, selected_on='valtiny', scales=(1.0,), flip=False, sliding=None):
    """results.json of a state-3 evaluation of the VOC 1/106 split-0 supervised checkpoint."""
    return {'state': 3, 'experiment': 'eval', 'dataset': 'voc', 'split': '106', 'sets_id': 0,
            'class_names': VOC_CLASSES, 'world_size': 1, 'method': 'supervised',
            'source_experiment': 'fs_voc_106-0', 'selected_on': selected_on,
            'reported_on': 'val', 'miou': miou, 'pixel_accuracy': 0.9,
            'scores': scores(miou, {name: miou for name in VOC_CLASSES}),
            'protocol': {'scales': list(scales), 'flip': flip, 'sliding_window': sliding}}


def write_run(folder, name, data, mtime=None):
    path = folder / 'logs' / name / 'results.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def runs(tmp_path):
    """VOC 1/106 and 1/8 supervised (splits 0, 1), VOC 1/106 DST-CBC (splits 0, 1), Cityscapes
    1/30 supervised (split 0 only), and what must be left out of the tables."""
    folder = tmp_path / 'work'
    write_run(folder, 'fs_voc_106-0', training_run(
        2, 'voc', '106', 0, 0.4571, 0.4500,
        iou={'background': 0.90, 'aeroplane': 0.50, 'bicycle': None}), mtime=1_000_000)
    write_run(folder, 'fs_voc_106-1', training_run(
        2, 'voc', '106', 1, 0.4633, 0.4600,
        iou={'background': 0.92, 'aeroplane': None, 'bicycle': None}))
    write_run(folder, 'fs_voc_8-0', training_run(2, 'voc', '8', 0, 0.6612, 0.6600))
    write_run(folder, 'fs_voc_8-1', training_run(2, 'voc', '8', 1, 0.6650, 0.6640))
    write_run(folder, 'ss_voc_106-0', training_run(1, 'voc', '106', 0, 0.6050, 0.6000))
    write_run(folder, 'ss_voc_106-1', training_run(1, 'voc', '106', 1, 0.6110, 0.6100))
    write_run(folder, 'fs_city_30-0', training_run(2, 'city', '30', 0, 0.4400, 0.4300))
    # Left out without a note: an unfinished self-training chain (would change the 1/106 mean
    # and fill 1/8), pseudo labels (state 0).
    write_run(folder, 'ss_voc_106-0_round2', training_run(1, 'voc', '106', 0, 0.9999, 0.9999,
                                                          final=False))
    write_run(folder, 'ss_voc_8-0_round2', training_run(1, 'voc', '8', 0, 0.7777, 0.7777,
                                                        final=False))
    write_run(folder, 'labels_106-0', {'state': 0, 'experiment': 'labels_106-0',
                                       'thresholds': [0.9, 0.8], 'labeled_share': 0.2})
    # Evaluations of the split-0 supervised checkpoint.
    write_run(folder, 'eval_single', evaluation_run(0.4420))
    write_run(folder, 'eval_msflip', evaluation_run(0.4610, selected_on=None,
                                                    scales=(0.5, 0.75, 1.0), flip=True))
    return folder


def table_rows(text, heading):
    """The rows of the table under the first line starting with `heading`, cells split at two
    or more spaces (the tables' column gap; no cell holds two spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading)) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(re.split(r'\s{2,}', line.strip()))
    return rows


def miou_cells(text, heading):
    """{(method, column): (ours, paper, diff)} of one mIoU table."""
    rows = table_rows(text, heading)
    columns = rows[0][1:]
    cells = {}
    for index in range(1, len(rows), 3):
        ours, paper, diff = rows[index], rows[index + 1], rows[index + 2]
        assert paper[0] == 'paper' and diff[0] == 'ours - paper'
        for column, values in zip(columns, zip(ours[1:], paper[1:], diff[1:])):
            cells[ours[0], column] = values
    return cells


def protocol_block(text, protocol):
    """The part of the output under the heading of `protocol`."""
    blocks = re.split(r'^(?==== )', text, flags=re.M)
    return next(block for block in blocks if block.startswith(f'=== {protocol} ===\n'))


def test_paper_protocol_table_means_stds_paper_and_missing(runs, capsys):
    assert paper_table.main([str(runs)]) == 0
    out = capsys.readouterr().out
    block = protocol_block(out, 'best on val')
    assert out.startswith("=== best on val ===\nThe paper's protocol")   # the paper's first

    voc = miou_cells(block, 'VOC mIoU')
    assert list(dict.fromkeys(column for _, column in voc)) == \
        ['1/106', '1/50', '1/20', '1/8', '1/4', 'full']
    # mean(45.71, 46.33) = 46.02, sample std = 0.62 / sqrt(2) = 0.438406; paper 45.7
    assert voc['supervised', '1/106'] == ('46.02 ± 0.44 (n=2)', '45.7', '+0.32')
    # mean(66.12, 66.50) = 66.31, std = 0.38 / sqrt(2) = 0.268701; paper 66.2
    assert voc['supervised', '1/8'] == ('66.31 ± 0.27 (n=2)', '66.2', '+0.11')
    # mean(60.50, 61.10) = 60.80, std = 0.60 / sqrt(2) = 0.424264; paper 61.6
    assert voc['DST-CBC', '1/106'] == ('60.80 ± 0.42 (n=2)', '61.6', '-0.80')
    # Only unfinished (final=false) DST-CBC runs exist at 1/8: missing, never 0 nor 77.77.
    assert voc['DST-CBC', '1/8'] == ('missing', '70.7', '-')
    assert voc['supervised', '1/50'] == ('missing', '55.4', '-')
    assert voc['supervised', 'full'] == ('missing', '73.5', '-')
    assert voc['DST-CBC', 'full'] == ('missing', '-', '-')   # the paper has no number

    city = miou_cells(block, 'Cityscapes mIoU')
    assert list(dict.fromkeys(column for _, column in city)) == ['1/30', '1/8', '1/4', 'full']
    assert city['supervised', '1/30'] == ('44.00 (n=1)', '45.5', '-1.50')   # one split: no ±
    assert city['DST-CBC', '1/30'] == ('missing', '48.7', '-')


def test_cells_hold_exact_numbers(runs):
    cells = paper_table.summarise(paper_table.collect_runs([runs]))
    by_key = {(c.protocol, c.dataset, c.split, c.method): c for c in cells}
    cell = by_key['best on val', 'voc', '106', 'supervised']
    assert cell.n == 2 and cell.sets_ids == (0, 1)
    assert cell.mean == pytest.approx(46.02)
    assert cell.std == pytest.approx(0.4384062043)
    assert cell.paper == 45.7 and cell.diff == pytest.approx(0.32)
    cell = by_key['best on val', 'voc', '106', 'dst-cbc']
    assert cell.mean == pytest.approx(60.80) and cell.std == pytest.approx(0.4242640687)
    assert by_key['best on val', 'city', '30', 'supervised'].std is None
    # last step: mean(45.00, 46.00) = 45.50, std = 1 / sqrt(2) = 0.707107
    cell = by_key['last step on val', 'voc', '106', 'supervised']
    assert cell.mean == pytest.approx(45.50) and cell.std == pytest.approx(0.7071067812)
    assert cell.paper == 45.7 and cell.diff == pytest.approx(-0.20)
    # final=false runs are not there at all
    assert ('best on val', 'voc', '8', 'dst-cbc') not in by_key
    assert all(c.mean < 99 for c in cells)


def test_per_class_means_skip_null(runs, capsys):
    assert paper_table.main([str(runs), '--protocol', 'best on val']) == 0
    rows = table_rows(capsys.readouterr().out, 'VOC per-class IoU')
    assert rows[0] == ['class', '1/106', '1/106', '1/8']
    assert rows[1] == ['supervised', 'DST-CBC', 'supervised']
    by_class = {row[0]: row[1:] for row in rows[2:]}
    assert list(by_class) == VOC_CLASSES
    assert by_class['background'] == ['91.00', '50.00', '50.00']   # mean(90, 92)
    assert by_class['aeroplane'] == ['50.00', '50.00', '50.00']    # 50 and null: not 25
    assert by_class['bicycle'] == ['n/a', '50.00', '50.00']        # null in every split


def test_protocols_are_named_and_selectable(runs, capsys):
    assert paper_table.main([str(runs)]) == 0
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line.startswith('=== ')]
    assert [line[4:-4] for line in headings] == [
        'best on val', 'last step on val',
        'selected on unknown, reported on val (multi-scale) (flip)',
        'selected on valtiny, reported on val']
    honest = miou_cells(protocol_block(out, 'selected on valtiny, reported on val'), 'VOC mIoU')
    assert honest['supervised', '1/106'] == ('44.20 (n=1)', '45.7', '-1.50')
    assert honest['DST-CBC', '1/106'][0] == 'missing'
    # only the VOC table: no Cityscapes run was evaluated
    assert 'Cityscapes' not in protocol_block(out, 'selected on valtiny, reported on val')

    assert paper_table.main([str(runs), '--protocol',
                             'selected on valtiny, reported on val']) == 0
    out = capsys.readouterr().out
    assert out.count('=== ') == 1 and 'best on val' not in out

    assert paper_table.main([str(runs), '--protocol', 'best on test']) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run under protocol 'best on test'") and err.count('\n') == 1


def test_valtiny_reports_are_not_compared_with_the_paper(tmp_path, capsys):
    write_run(tmp_path, 'fs_voc_106-0_tiny', training_run(2, 'voc', '106', 0, 0.5000, 0.4900,
                                                          val_list='valtiny'))
    assert paper_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "=== best on valtiny ===\nReported on valtiny: not comparable" in out
    cells = miou_cells(protocol_block(out, 'best on valtiny'), 'VOC mIoU')
    assert cells['supervised', '1/106'] == ('50.00 (n=1)', '-', '-')


def test_extra_fraction_gets_its_own_column(tmp_path, capsys):
    write_run(tmp_path, 'fs_voc_2-0', training_run(2, 'voc', '2', 0, 0.7000, 0.7000))
    write_run(tmp_path, 'fs_voc_106-0', training_run(2, 'voc', '106', 0, 0.4500, 0.4500))
    assert paper_table.main([str(tmp_path), '--protocol', 'best on val']) == 0
    cells = miou_cells(capsys.readouterr().out, 'VOC mIoU')
    assert list(dict.fromkeys(column for _, column in cells)) == \
        ['1/106', '1/50', '1/20', '1/8', '1/4', 'full', '1/2']
    assert cells['supervised', '1/2'] == ('70.00 (n=1)', '-', '-')


def test_duplicate_run_keeps_the_newer_file(runs, tmp_path, capsys):
    copy = tmp_path / 'copy'
    older = runs / 'logs' / 'fs_voc_106-0' / 'results.json'
    newer = write_run(copy, 'fs_voc_106-0', training_run(2, 'voc', '106', 0, 0.4711, 0.4500),
                      mtime=2_000_000)
    assert paper_table.main([str(runs), str(copy), '--protocol', 'best on val']) == 0
    captured = capsys.readouterr()
    # mean(47.11, 46.33) = 46.72, std = 0.78 / sqrt(2) = 0.551543: split 0 counted once
    cells = miou_cells(captured.out, 'VOC mIoU')
    assert cells['supervised', '1/106'] == ('46.72 ± 0.55 (n=2)', '45.7', '+1.02')
    notes = [line for line in captured.err.splitlines() if 'same run' in line]
    assert len(notes) == 1 and str(newer) in notes[0] and str(older) in notes[0]

    os.utime(newer, (500_000, 500_000))   # now the copy is the older one
    assert paper_table.main([str(runs), str(copy), '--protocol', 'best on val']) == 0
    cells = miou_cells(capsys.readouterr().out, 'VOC mIoU')
    assert cells['supervised', '1/106'][0] == '46.02 ± 0.44 (n=2)'

    # the same folder given twice is not a duplicate
    assert paper_table.main([str(runs), str(runs)]) == 0
    assert 'same run' not in capsys.readouterr().err


TRAINING_SETTINGS = {'state': 2, 'exp_name': 'run_voc_106-0', 'dataset': 'voc', 'split': '106',
                     'sets_id': 0, 'data_root_resolved': '/data/VOC2012', 'lr': 0.002,
                     'gamma': 0.0, 'init_epochs': 30, 'backbone': 'resnet101', 'seed': 0,
                     'continue_from': None, 'workers': 4, 'device': 'cuda'}


def write_settings(results_path, **changes):
    settings = dict(TRAINING_SETTINGS, **changes)
    (results_path.parent / 'settings.json').write_text(json.dumps(settings))


@pytest.mark.parametrize('changes,shown', [
    ({'lr': 0.001}, '--lr (0.002 vs 0.001)'),
    ({'data_root_resolved': '/other/VOC2012'}, '--data-root ("/data/VOC2012" vs "/other/VOC2012")'),
    ({'init_epochs': 60}, '--init-epochs (30 vs 60)'),
    ({'continue_from': 'coco.pt'}, '--continue-from (null vs "coco.pt")'),
])
def test_different_runs_of_one_split_are_reported_not_silently_chosen(runs, tmp_path, capsys,
                                                                      changes, shown):
    first = runs / 'logs' / 'fs_voc_106-0' / 'results.json'
    write_settings(first)
    second = write_run(tmp_path / 'other', 'fs_voc_106-0',
                       training_run(2, 'voc', '106', 0, 0.4711, 0.4500), mtime=2_000_000)
    write_settings(second, **changes)
    assert paper_table.main([str(runs), str(tmp_path / 'other'), '--protocol', 'best on val']) == 0
    captured = capsys.readouterr()
    # Neither the newer (47.11) nor the older (45.71) stands for split 0: only split 1 is left.
    cells = miou_cells(captured.out, 'VOC mIoU')
    assert cells['supervised', '1/106'] == ('46.33 (n=1)', '45.7', '+0.63')
    assert captured.err == (f'note: different runs for VOC 1/106 supervised, split 0: {first} and '
                            f'{second} differ in {shown}; both are left out of the tables (move '
                            'one away to count the other)\n')


def test_settings_that_do_not_change_the_numbers_leave_it_the_same_run(runs, tmp_path, capsys):
    older = runs / 'logs' / 'fs_voc_106-0' / 'results.json'
    write_settings(older)
    newer = write_run(tmp_path / 'other', 'fs_voc_106-0',
                      training_run(2, 'voc', '106', 0, 0.4711, 0.4500), mtime=2_000_000)
    write_settings(newer, workers=0, device='cpu', pseudo_dir='elsewhere')
    assert paper_table.main([str(runs), str(tmp_path / 'other'), '--protocol', 'best on val']) == 0
    captured = capsys.readouterr()
    assert miou_cells(captured.out, 'VOC mIoU')['supervised', '1/106'][0] == '46.72 ± 0.55 (n=2)'
    assert captured.err == (f'note: the same run in {newer} and {older}: using the newer, '
                            f'{newer}\n')


def test_without_settings_json_what_results_json_records_tells_runs_apart(tmp_path, capsys):
    # The network (results.json 'architecture') and DST-CBC's gamma are recorded in the results.
    for folder, backbone, gamma, best in (('a', 'resnet101', 2.0, 0.6050), ('b', 'resnet14', 2.0, 0.5000),
                                          ('c', 'resnet101', 0.0, 0.6200)):
        data = training_run(1, 'voc', '106', 0, best, best)
        data.update(architecture={'backbone': backbone, 'head_branches': 2}, gamma=gamma)
        write_run(tmp_path / folder, 'ss_voc_106-0', data, mtime={'a': 1, 'b': 2, 'c': 3}[folder])
    assert paper_table.main([str(tmp_path / 'a'), str(tmp_path / 'b'), '--protocol',
                             'best on val']) == 1   # the only run's split is left out
    err = capsys.readouterr().err
    assert '--backbone ("resnet101" vs "resnet14")' in err
    assert paper_table.main([str(tmp_path / 'a'), str(tmp_path / 'c'), '--protocol',
                             'best on val']) == 1
    assert '--gamma (2.0 vs 0.0)' in capsys.readouterr().err


def test_evaluations_of_different_checkpoints_are_different_runs(tmp_path, capsys):
    for name, checkpoint in (('eval_a', 'fs_voc_106-0.pt'), ('eval_b', 'other/fs_voc_106-0.pt')):
        data = evaluation_run(0.4420)
        data['checkpoint'] = checkpoint
        write_run(tmp_path, name, data)
    assert paper_table.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert 'differ in --continue-from ("fs_voc_106-0.pt" vs "other/fs_voc_106-0.pt")' in err


def test_a_settings_json_of_another_run_is_set_aside(runs, tmp_path, capsys):
    # A later state 3 under the run's name rewrote its settings.json: it says nothing of the run.
    results = runs / 'logs' / 'fs_voc_106-0' / 'results.json'
    write_settings(results, state=3, lr=0.5)
    copy = write_run(tmp_path / 'copy', 'fs_voc_106-0', json.loads(results.read_text()),
                     mtime=2_000_000)
    assert paper_table.main([str(runs), str(tmp_path / 'copy'), '--protocol', 'best on val']) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"note: {results.parent / 'settings.json'} is of another run (state 3, "
                      f'results 2); the run of {results} is compared by its results alone')
    assert err[1].startswith(f'note: the same run in {copy} and {results}')


def test_the_training_settings_are_those_a_resume_may_not_change():
    from utils.context import RUN_DEFINING_FLAGS
    # the dataset is in the key by its name; its description's digest is only a resume's business
    in_the_key, only_where_labels_go = {'state', 'dataset', 'dataset_digest', 'split', 'sets_id'}, {'pseudo_dir'}
    assert set(paper_table.TRAINING_SETTINGS) == \
        set(RUN_DEFINING_FLAGS) - in_the_key - only_where_labels_go


def test_nested_working_folders_are_found(runs, tmp_path, capsys):
    assert paper_table.main([str(tmp_path), '--protocol', 'best on val']) == 0
    assert '46.02 ± 0.44 (n=2)' in capsys.readouterr().out


def test_csv_rows(runs, tmp_path):
    out = tmp_path / 'table.csv'
    cells = paper_table.summarise(paper_table.collect_runs([runs]))
    paper_table.write_csv(cells, out)
    with open(out, newline='') as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ['protocol', 'dataset', 'fraction', 'method', 'n_splits', 'sets_ids',
                             'mean_miou', 'std_miou', 'paper_miou', 'diff', 'iou_background',
                             'iou_aeroplane', 'iou_bicycle', 'iou_road', 'iou_sidewalk']
    by_key = {(r['protocol'], r['dataset'], r['fraction'], r['method']): r for r in rows}
    row = by_key['best on val', 'voc', '1/106', 'supervised']
    assert [row[k] for k in ('n_splits', 'sets_ids', 'mean_miou', 'std_miou', 'paper_miou',
                             'diff')] == ['2', '0 1', '46.02', '0.44', '45.70', '0.32']
    assert (row['iou_background'], row['iou_aeroplane'], row['iou_bicycle'], row['iou_road']) \
        == ('91.00', '50.00', '', '')
    row = by_key['best on val', 'voc', '1/106', 'dst-cbc']
    assert (row['mean_miou'], row['std_miou'], row['diff']) == ('60.80', '0.42', '-0.80')
    row = by_key['best on val', 'voc', '1/8', 'dst-cbc']   # missing: empty, with the paper's
    assert (row['n_splits'], row['sets_ids'], row['mean_miou'], row['paper_miou'], row['diff']) \
        == ('0', '', '', '70.70', '')
    row = by_key['best on val', 'city', '1/30', 'supervised']
    assert (row['n_splits'], row['sets_ids'], row['mean_miou'], row['std_miou'], row['diff'],
            row['iou_road']) == ('1', '0', '44.00', '', '-1.50', '50.00')
    row = by_key['selected on valtiny, reported on val', 'voc', '1/106', 'supervised']
    assert (row['mean_miou'], row['diff']) == ('44.20', '-1.50')
    assert by_key['best on val', 'voc', 'full', 'dst-cbc']['paper_miou'] == ''
    # VOC: 6 fractions x 2 methods, Cityscapes: 4 x 2, for best and last step; the two
    # evaluations: VOC only
    assert len(rows) == 2 * (12 + 8) + 2 * 12
    assert not list(tmp_path.glob('*.tmp'))   # no temporary file left


def test_command_line_writes_csv_and_png(runs, tmp_path):
    completed = subprocess.run(
        [sys.executable, 'paper_table.py', str(runs), '--csv', str(tmp_path / 'out.csv'),
         '--plot', str(tmp_path / 'out.png')],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert '46.02 ± 0.44 (n=2)' in completed.stdout
    with open(tmp_path / 'out.csv', newline='') as file:
        rows = list(csv.DictReader(file))
    row = next(r for r in rows if (r['protocol'], r['dataset'], r['fraction'], r['method'])
               == ('best on val', 'voc', '1/8', 'supervised'))
    assert (row['mean_miou'], row['std_miou'], row['paper_miou'], row['diff']) == \
        ('66.31', '0.27', '66.20', '0.11')

    umask = os.umask(0)
    os.umask(umask)
    for name in ('out.csv', 'out.png'):   # mkstemp's 0600 hid them from a shared group
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name

    import matplotlib.image
    assert (tmp_path / 'out.png').stat().st_size > 0
    image = matplotlib.image.imread(tmp_path / 'out.png')
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0   # something was drawn


def test_plot_of_a_chosen_protocol(runs, tmp_path):
    cells = paper_table.summarise(paper_table.collect_runs([runs]))
    path = tmp_path / 'honest.png'
    paper_table.plot(cells, path, 'selected on valtiny, reported on val')
    import matplotlib.image
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 100
    assert paper_table.plot_protocol(cells) == 'best on val'


def test_a_cut_off_results_file_is_a_note_and_the_table_is_still_made(runs, capsys):
    text = json.dumps(training_run(2, 'voc', '106', 2, 0.9000, 0.9000))
    cut = text[:text.index('"best_miou": ') + len('"best_miou": ')]   # ends after the colon
    broken = write_run(runs, 'fs_voc_106-2', cut)
    note = (f'note: skipped {broken}: invalid JSON: Expecting value at line 1 column '
            f'{len(cut) + 1} (the file ends there: cut off?)\n')
    assert paper_table.main([str(runs), '--protocol', 'best on val']) == 0
    captured = capsys.readouterr()
    assert captured.err == note
    # split 2 (90.00) is not counted: mean(45.71, 46.33) as without it
    assert miou_cells(captured.out, 'VOC mIoU')['supervised', '1/106'][0] == '46.02 ± 0.44 (n=2)'

    completed = subprocess.run([sys.executable, 'paper_table.py', str(runs)], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and completed.stderr == note
    assert '46.02 ± 0.44 (n=2)' in completed.stdout


MISSING = object()


@pytest.mark.parametrize('field,value,reason', [
    ('split', None, "'split' is null, expected str or int"),
    ('state', MISSING, "no 'state' (not a results file this script knows)"),
    ('state', None, "'state' is null, expected int"),
    ('state', True, "'state' is true, expected int"),
    ('state', 7, "'state' is 7, not 0, 1, 2 or 3 (not a results file this script knows)"),
    ('best_miou', '0.9', "'best_miou' is \"0.9\", expected int or float or null"),
    ('best_miou', 90.0, "'best_miou' is 90.0, expected a number in 0..1 or null"),
    ('last_miou', [0.9], "'last_miou' is [0.9], expected int or float or null"),
    ('sets_id', '2', "'sets_id' is \"2\", expected int"),
    ('class_names', 'background', "'class_names' is \"background\", expected list of str"),
    ('class_names', ['background', None], "'class_names' is [\"background\", null], expected "
                                          'list of str'),
    ('best_scores', [0.9], "'best_scores' is [0.9], expected dict or null"),
    ('best_scores', {'iou': [0.9]}, "'best_scores.iou' is [0.9], expected dict or null"),
    ('best_scores', {'iou': {'background': '0.9'}},
     "'best_scores.iou.background' is \"0.9\", expected a number in 0..1 or null"),
])
def test_a_field_of_the_wrong_type_is_a_note_naming_the_file(runs, capsys, field, value, reason):
    data = training_run(2, 'voc', '106', 2, 0.9000, 0.9000)
    if value is MISSING:
        del data[field]
    else:
        data[field] = value
    path = write_run(runs, 'fs_voc_106-2', data)
    assert paper_table.main([str(runs), '--protocol', 'best on val']) == 0
    captured = capsys.readouterr()
    assert captured.err == f'note: skipped {path}: {reason}\n'
    # the file counts whole or not at all: split 2 (90.00) is in no cell
    assert miou_cells(captured.out, 'VOC mIoU')['supervised', '1/106'][0] == '46.02 ± 0.44 (n=2)'


@pytest.mark.parametrize('protocol,reason', [
    ({'scales': ['1.0'], 'flip': False}, "'protocol.scales' is [\"1.0\"], expected list of int or "
                                         'float'),
    ({'scales': [], 'flip': False}, "'protocol.scales' is [], expected at least one scale"),
    ({'scales': [1.0], 'flip': 'no'}, "'protocol.flip' is \"no\", expected bool"),
    ({'flip': False}, "no 'protocol.scales' (not a results file this script knows)"),
    (None, "'protocol' is null, expected dict"),
])
def test_an_evaluation_with_a_broken_protocol_is_a_note_naming_the_file(runs, capsys, protocol,
                                                                       reason):
    data = evaluation_run(0.9000)
    data.update(sets_id=1, protocol=protocol)
    path = write_run(runs, 'eval_broken', data)
    assert paper_table.main([str(runs), '--protocol', 'selected on valtiny, reported on val']) == 0
    captured = capsys.readouterr()
    assert captured.err == f'note: skipped {path}: {reason}\n'
    cells = miou_cells(captured.out, 'VOC mIoU')
    assert cells['supervised', '1/106'][0] == '44.20 (n=1)'   # split 1's 90.00 is not there


def test_unknown_shapes_are_skipped_and_no_runs_is_reported(tmp_path, capsys):
    write_run(tmp_path, 'labels', {'state': 0, 'thresholds': [0.5]})
    write_run(tmp_path, 'old', {'state': 2, 'best_miou': 0.5})   # an older format: no dataset
    assert paper_table.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith('note: skipped ') and "no 'dataset'" in err[0]
    assert err[-1].startswith('error: no finished run')
    assert len(err) == 2   # state 0 is skipped without a note: it never gives a number

    assert paper_table.main([str(tmp_path / 'absent')]) == 2
    assert capsys.readouterr().err == f'error: {tmp_path / "absent"}: no such folder\n'


@pytest.mark.parametrize('data,kind', [([1, 2, 3], 'array'), ('"results"', 'string'),
                                       ('0.61', 'number'), ('null', 'null')])
def test_results_that_are_not_an_object_get_a_note_naming_the_file(runs, capsys, data, kind):
    path = write_run(runs, 'fs_voc_50-0', json.dumps(data) if isinstance(data, list) else data)
    assert paper_table.main([str(runs), '--protocol', 'best on val']) == 0
    captured = capsys.readouterr()
    assert captured.err == (f'note: skipped {path}: a JSON {kind}, not an object '
                            '(not a results file this script knows)\n')
    assert '46.02 ± 0.44 (n=2)' in captured.out   # the other runs are still counted


def test_a_binary_file_is_a_note_naming_it(runs, capsys):
    path = write_run(runs, 'binary', '')
    path.write_bytes(b'\xff\xfe\x00garbage')
    assert paper_table.main([str(runs), '--protocol', 'best on val']) == 0
    captured = capsys.readouterr()
    assert captured.err == f'note: skipped {path}: not UTF-8 text\n'
    assert '46.02 ± 0.44 (n=2)' in captured.out


def test_sliding_window_and_valtiny_report_are_named(tmp_path):
    data = evaluation_run(0.45, selected_on='val', sliding=[321, 321])
    data['reported_on'] = 'valtiny'
    [entry] = paper_table.entries_from_results(data, tmp_path / 'results.json')
    assert entry.protocol == 'selected on val, reported on valtiny (sliding window)'
    assert entry.reported_on == 'valtiny' and entry.miou == pytest.approx(45.0)


def test_unwritable_output_is_a_one_line_error(runs, tmp_path, capsys):
    blocker = tmp_path / 'a file'   # where a folder should be (a missing folder is made)
    blocker.write_text('')
    target = blocker / 'out.csv'
    assert paper_table.main([str(runs), '--csv', str(target)]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f'error: cannot write {target}: ') and err.count('\n') == 1
