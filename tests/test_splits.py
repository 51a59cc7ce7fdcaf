"""generate_splits.py: the paper's splits byte for byte, the k rule by hand, bad lists, and the
shipped splits never changed. The script runs in-process (its `main`), which saves a Python start
and the imports of data_processing per call."""
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import generate_splits
from generate_splits import (check_fractions, fraction_name, labeled_count, make_splits,
                             read_list)
from utils.errors import InputError

DATASETS = {  # flag -> (reference split folder, sorted full list)
    'voc': ('PASCAL_VOC_2012', 'voc_trainaug_sorted.txt'),
    'city': ('Cityscapes', 'cityscapes_train_sorted.txt'),
}
# The spec lists Cityscapes fractions 2 and 20, the paper's folder does not ship them.
SPEC_ONLY_FILES = {
    'voc': set(),
    'city': {f'{s}_{kind}_{i}.txt' for s in (2, 20) for kind in ('labeled', 'unlabeled')
             for i in range(3)},
}


@pytest.fixture
def run_script(capsys):
    """generate_splits.py's command line called in this process: its exit status and output."""
    def run(*args):
        try:
            generate_splits.main([str(arg) for arg in args])
            status = 0
        except SystemExit as exit:
            status = exit.code
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=captured.out, stderr=captured.err)
    return run


def split_files(folder):
    return {path.name: path.read_bytes() for path in Path(folder).iterdir()
            if path.is_file() and path.name != 'valtiny.txt'}


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ')
    for fragment in fragments:
        assert str(fragment) in lines[0]


# --- the k rule, worked out by hand ---------------------------------------------------------

def test_labeled_count_hand_values():
    assert labeled_count(10582, 105.82) == 100   # 10582 / 105.82 = 100; 100 % 8 = 4
    assert labeled_count(10582, 8) == 1322       # 1322.75 -> 1322; 1322 % 8 = 2
    assert labeled_count(10582, 20) == 530       # 529.1 -> 529; 529 % 8 = 1 -> bumped to 530
    assert labeled_count(2975, 29.75) == 100
    assert labeled_count(2975, 2) == 1487        # 1487.5 -> 1487; 1487 % 8 = 7
    assert labeled_count(17, 2) == 8             # 8.5 -> 8; 8 % 8 = 0
    assert labeled_count(18, 2) == 10            # 9 % 8 = 1 -> bumped to 10


def test_bump_on_small_list():
    names = [f'img{i:02d}' for i in range(18)]
    splits = make_splits(names, [2, 3], num_sets=1)
    # 18 / 2 = 9 and 9 % 8 == 1, so one more image is labeled; 18 / 3 = 6 stays.
    assert len(splits['2_labeled_0.txt']) == 10
    assert len(splits['2_unlabeled_0.txt']) == 8
    assert len(splits['3_labeled_0.txt']) == 6
    assert len(splits['3_unlabeled_0.txt']) == 12


def test_fraction_names():
    assert fraction_name(105.82) == '106'
    assert fraction_name(29.75) == '30'
    assert fraction_name(8.0) == '8'
    assert fraction_name(2.5) == '3'


@pytest.mark.parametrize('fractions', [[1], [0.5], [2, 2.4], [1.2], [], [float('nan')]])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError):
        check_fractions(fractions)


# --- properties of the split ----------------------------------------------------------------

def test_labeled_and_unlabeled_partition_the_shuffled_list():
    names = [f'n{i:03d}' for i in range(203)]
    splits = make_splits(names, [2, 4, 8, 20, 29.75])
    assert len(splits) == 3 * (1 + 2 * 5)
    for set_id in range(3):
        whole = splits[f'1_labeled_{set_id}.txt']
        assert sorted(whole) == names and whole != names
        for prefix in ('2', '4', '8', '20', '30'):
            labeled = splits[f'{prefix}_labeled_{set_id}.txt']
            unlabeled = splits[f'{prefix}_unlabeled_{set_id}.txt']
            assert labeled + unlabeled == whole
            assert not set(labeled) & set(unlabeled)
    assert names == [f'n{i:03d}' for i in range(203)]  # the caller's list is untouched


def test_shuffles_accumulate_from_one_seeded_stream():
    names = [f'n{i:02d}' for i in range(40)]
    splits = make_splits(names, [4], seed=7777)
    rng = random.Random(7777)
    order = list(names)
    expected = []
    for _ in range(3):
        rng.shuffle(order)
        expected.append(list(order))
    assert [splits[f'1_labeled_{i}.txt'] for i in range(3)] == expected
    restarted = list(names)
    random.Random(7777).shuffle(restarted)
    assert splits['1_labeled_1.txt'] != restarted  # set 1 is not set 0 again
    assert make_splits(names, [4], seed=7778)['1_labeled_0.txt'] != expected[0]


def test_fewer_fractions_do_not_change_the_other_files():
    names = [f'n{i:03d}' for i in range(150)]
    full = make_splits(names, [2, 4, 8, 20, 29.75])
    fewer = make_splits(names, [4, 8, 29.75])
    assert set(fewer) < set(full)
    for file_name, lines in fewer.items():
        assert full[file_name] == lines


def test_too_few_names_for_a_fraction():
    with pytest.raises(ValueError, match='too few'):
        make_splits(['a', 'b', 'c'], [4])


# --- the paper's splits ---------------------------------------------------------------------

def test_reproduces_reference_splits_byte_for_byte(shared_dir, repo_root, tmp_path, run_script):
    compared = 0
    for flag, (folder, list_name) in DATASETS.items():
        out = tmp_path / folder
        result = run_script('--dataset', flag,
                            '--list', shared_dir / 'reference' / 'lists' / list_name, '--out', out)
        assert result.returncode == 0, result.stderr
        produced = split_files(out)
        reference = split_files(shared_dir / 'reference' / 'splits' / folder)
        assert set(produced) - set(reference) == SPEC_ONLY_FILES[flag]
        assert set(reference) <= set(produced)
        for file_name, data in reference.items():
            assert produced[file_name] == data, f'{folder}/{file_name} differs'
            compared += 1
        # the repo's copy was generated by this script, including the spec-only files
        assert produced == split_files(repo_root / 'data_splits' / folder)
        assert not [path for path in out.iterdir() if path.name.endswith('.tmp')]
    assert compared == 60


@pytest.fixture
def shipped_copy(repo_root, tmp_path, monkeypatch):
    """The script's repository moved to a copy of data_splits/PASCAL_VOC_2012, so that a test of
    the shipped folder can never change the real one (as the old code did)."""
    from dataclasses import replace

    copy = tmp_path / 'repo'
    shutil.copytree(repo_root / 'data_splits' / 'PASCAL_VOC_2012',
                    copy / 'data_splits' / 'PASCAL_VOC_2012')
    monkeypatch.setattr(generate_splits, 'REPO_DIR', copy)
    read_dataset = generate_splits.read_dataset
    monkeypatch.setattr(generate_splits, 'read_dataset', lambda value: replace(
        read_dataset(value), splits_dir=copy / 'data_splits' / 'PASCAL_VOC_2012'))
    return copy / 'data_splits' / 'PASCAL_VOC_2012'


def test_another_list_without_out_leaves_the_shipped_splits_alone(shipped_copy, tmp_path,
                                                                  run_script):
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
              for path in shipped_copy.iterdir()}
    mine = write(tmp_path / 'my_train.txt', ''.join(f'img{i:04d}\n' for i in range(300)))
    result = run_script('--dataset', 'voc', '--list', mine)
    assert_one_line_error(result, shipped_copy, '1_labeled_0.txt would change', '--out DIR')
    assert result.stdout == ''
    after = {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
             for path in shipped_copy.iterdir()}
    assert after == before   # not one file written, not even an identical one


def test_the_papers_list_without_out_only_restores_missing_files(shared_dir, shipped_copy,
                                                                 run_script):
    paper_list = shared_dir / 'reference' / 'lists' / 'voc_trainaug_sorted.txt'
    shipped = split_files(shipped_copy)
    result = run_script('--dataset', 'voc', '--list', paper_list)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f'wrote 0 of 39 split files for 10582 names to {shipped_copy}; '
                             'the other 39 were there already, byte-identical\n')
    (shipped_copy / '8_labeled_2.txt').unlink()
    result = run_script('--dataset', 'voc', '--list', paper_list)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'wrote 1 of 39 split files for 10582 names to {shipped_copy}; '
                                    'the other 38 ')
    assert split_files(shipped_copy) == shipped


def test_repo_data_splits_equal_reference(shared_dir, repo_root):
    for flag, (folder, _) in DATASETS.items():
        reference_dir = shared_dir / 'reference' / 'splits' / folder
        repo_dir = repo_root / 'data_splits' / folder
        reference = {path.name: path.read_bytes() for path in reference_dir.iterdir()}
        repo = {path.name: path.read_bytes() for path in repo_dir.iterdir()}
        assert 'valtiny.txt' in reference
        assert set(repo) - set(reference) == SPEC_ONLY_FILES[flag]
        for file_name, data in reference.items():
            assert repo.get(file_name) == data, f'data_splits/{folder}/{file_name} differs'


def test_reference_sizes_match_the_k_rule(shared_dir):
    voc = shared_dir / 'reference' / 'splits' / 'PASCAL_VOC_2012'
    assert len((voc / '106_labeled_0.txt').read_text().splitlines()) == 100
    assert len((voc / '8_labeled_2.txt').read_text().splitlines()) == 1322
    assert len((voc / '20_labeled_1.txt').read_text().splitlines()) == 530


# --- bad input ------------------------------------------------------------------------------

def write(path, text):
    path.write_text(text)
    return path


def test_missing_list_file(tmp_path, run_script):
    missing = tmp_path / 'nope.txt'
    result = run_script('--dataset', 'voc', '--list', missing, '--out', tmp_path / 'o')
    assert_one_line_error(result, missing)
    assert not (tmp_path / 'o').exists()


def test_unsorted_list_is_refused_unless_sort(tmp_path, run_script):
    names = [f'n{i:02d}' for i in range(30)]
    unsorted = write(tmp_path / 'unsorted.txt', ''.join(f'{n}\n' for n in reversed(names)))
    result = run_script('--dataset', 'city', '--list', unsorted, '--out', tmp_path / 'o')
    assert_one_line_error(result, unsorted, 'not sorted', '--sort')
    assert not (tmp_path / 'o').exists()

    result = run_script('--dataset', 'city', '--list', unsorted, '--out', tmp_path / 'o',
                        '--sort', '--fractions', '2,4')
    assert result.returncode == 0, result.stderr
    expected = make_splits(names, [2, 4])
    produced = split_files(tmp_path / 'o')
    assert produced == {name: ''.join(f'{n}\n' for n in lines).encode()
                        for name, lines in expected.items()}


def test_duplicate_names(tmp_path, run_script):
    listed = write(tmp_path / 'dups.txt', 'a\nb\nb\nc\n')
    result = run_script('--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o')
    assert_one_line_error(result, listed, "'b'", 'lines 2 and 3')


def test_empty_list(tmp_path, run_script):
    listed = write(tmp_path / 'empty.txt', '\n\n')
    result = run_script('--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o')
    assert_one_line_error(result, listed, 'no names')


def test_bad_fractions_flag(tmp_path, run_script):
    listed = write(tmp_path / 'l.txt', 'a\nb\nc\n')
    result = run_script('--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o',
                        '--fractions', '2,x')
    assert_one_line_error(result, '--fractions')
    result = run_script('--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o',
                        '--fractions', '1')
    assert_one_line_error(result, '--fractions')


def test_list_too_short_for_fraction_names_the_file(tmp_path, run_script):
    listed = write(tmp_path / 'short.txt', 'a\nb\nc\n')
    result = run_script('--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o')
    assert_one_line_error(result, listed, 'too few')


def test_read_list_tolerates_crlf_and_blank_lines(tmp_path):
    listed = write(tmp_path / 'crlf.txt', '')
    listed.write_bytes(b'a\r\nb\r\n\r\nc\r\n')
    assert read_list(listed) == ['a', 'b', 'c']
    with pytest.raises(InputError, match='not sorted'):
        read_list(write(tmp_path / 'u.txt', 'b\na\n'))
    assert read_list(tmp_path / 'u.txt', sort=True) == ['a', 'b']
