"""generate_splits.py: the paper's splits byte for byte, the k rule by hand, and bad lists."""
import random
import subprocess
import sys
from pathlib import Path

import pytest

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


def run_script(repo_root, *args):
    return subprocess.run([sys.executable, str(repo_root / 'generate_splits.py'), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


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

def test_reproduces_reference_splits_byte_for_byte(shared_dir, repo_root, tmp_path):
    compared = 0
    for flag, (folder, list_name) in DATASETS.items():
        out = tmp_path / folder
        result = run_script(repo_root, '--dataset', flag,
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


def test_missing_list_file(repo_root, tmp_path):
    missing = tmp_path / 'nope.txt'
    result = run_script(repo_root, '--dataset', 'voc', '--list', missing, '--out', tmp_path / 'o')
    assert_one_line_error(result, missing)
    assert not (tmp_path / 'o').exists()


def test_unsorted_list_is_refused_unless_sort(repo_root, tmp_path):
    names = [f'n{i:02d}' for i in range(30)]
    unsorted = write(tmp_path / 'unsorted.txt', ''.join(f'{n}\n' for n in reversed(names)))
    result = run_script(repo_root, '--dataset', 'city', '--list', unsorted, '--out', tmp_path / 'o')
    assert_one_line_error(result, unsorted, 'not sorted', '--sort')
    assert not (tmp_path / 'o').exists()

    result = run_script(repo_root, '--dataset', 'city', '--list', unsorted, '--out', tmp_path / 'o',
                        '--sort', '--fractions', '2,4')
    assert result.returncode == 0, result.stderr
    expected = make_splits(names, [2, 4])
    produced = split_files(tmp_path / 'o')
    assert produced == {name: ''.join(f'{n}\n' for n in lines).encode()
                        for name, lines in expected.items()}


def test_duplicate_names(repo_root, tmp_path):
    listed = write(tmp_path / 'dups.txt', 'a\nb\nb\nc\n')
    result = run_script(repo_root, '--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o')
    assert_one_line_error(result, listed, "'b'", 'lines 2 and 3')


def test_empty_list(repo_root, tmp_path):
    listed = write(tmp_path / 'empty.txt', '\n\n')
    result = run_script(repo_root, '--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o')
    assert_one_line_error(result, listed, 'no names')


def test_bad_fractions_flag(repo_root, tmp_path):
    listed = write(tmp_path / 'l.txt', 'a\nb\nc\n')
    result = run_script(repo_root, '--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o',
                        '--fractions', '2,x')
    assert_one_line_error(result, '--fractions')
    result = run_script(repo_root, '--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o',
                        '--fractions', '1')
    assert_one_line_error(result, '--fractions')


def test_list_too_short_for_fraction_names_the_file(repo_root, tmp_path):
    listed = write(tmp_path / 'short.txt', 'a\nb\nc\n')
    result = run_script(repo_root, '--dataset', 'voc', '--list', listed, '--out', tmp_path / 'o')
    assert_one_line_error(result, listed, 'too few')


def test_read_list_tolerates_crlf_and_blank_lines(tmp_path):
    listed = write(tmp_path / 'crlf.txt', '')
    listed.write_bytes(b'a\r\nb\r\n\r\nc\r\n')
    assert read_list(listed) == ['a', 'b', 'c']
    with pytest.raises(InputError, match='not sorted'):
        read_list(write(tmp_path / 'u.txt', 'b\na\n'))
    assert read_list(tmp_path / 'u.txt', sort=True) == ['a', 'b']
