"""cityscapes_data_lists.py on a tiny Cityscapes-layout tree built out of order on purpose."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cityscapes_data_lists import list_split
from utils.errors import InputError

# (split, city, frame ids) in a deliberately unsorted creation order
LAYOUT = [
    ('train', 'zurich', ['000010', '000002']),
    ('train', 'aachen', ['000005', '000001', '000003']),
    ('train', 'bochum', ['000007']),
    ('val', 'munster', ['000004', '000000']),
    ('val', 'frankfurt', ['000009']),
    ('test', 'berlin', ['000002', '000001']),
]


def tiny_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((2, 4), value, dtype=np.uint8)).save(path)


def build_tree(root, layout=LAYOUT):
    for split, city, frames in layout:
        for frame in frames:
            name = f'{city}_{frame}_000019'
            tiny_png(root / 'leftImg8bit' / split / city / f'{name}_leftImg8bit.png', 10)
            tiny_png(root / 'gtFine' / split / city / f'{name}_gtFine_labelIds.png', 7)
    # noise the lister must ignore: a stray file in a city and one beside the cities
    for city_dir in sorted((root / 'leftImg8bit').glob('*/*')):
        (city_dir / 'notes.txt').write_text('x')
        (city_dir.parent / 'README').write_text('x')
        break


def run_script(repo_root, *args):
    return subprocess.run(
        [sys.executable, str(repo_root / 'cityscapes_data_lists.py'), *map(str, args)],
        capture_output=True, text=True, timeout=60)


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ') and str(fragment) in lines[0]


def test_lists_are_sorted_by_city_then_name(repo_root, tmp_path):
    root = tmp_path / 'cityscapes'
    build_tree(root)
    result = run_script(repo_root, '--root', root)
    assert result.returncode == 0, result.stderr
    lists = root / 'data_lists'
    assert (lists / 'train.txt').read_bytes() == (
        b'aachen/aachen_000001_000019\n'
        b'aachen/aachen_000003_000019\n'
        b'aachen/aachen_000005_000019\n'
        b'bochum/bochum_000007_000019\n'
        b'zurich/zurich_000002_000019\n'
        b'zurich/zurich_000010_000019\n')
    assert (lists / 'val.txt').read_bytes() == (
        b'frankfurt/frankfurt_000009_000019\n'
        b'munster/munster_000000_000019\n'
        b'munster/munster_000004_000019\n')
    assert (lists / 'test.txt').read_bytes() == (
        b'berlin/berlin_000001_000019\n'
        b'berlin/berlin_000002_000019\n')
    assert sorted(path.name for path in lists.iterdir()) == ['test.txt', 'train.txt', 'val.txt']


def test_cities_sort_before_names(tmp_path):
    # '-' sorts before '/', so sorting whole entries would put 'a-b/...' first
    root = tmp_path / 'c'
    build_tree(root, [('val', 'a-b', ['000001']), ('val', 'a', ['000002'])])
    assert list_split(root, 'val') == ['a/a_000002_000019', 'a-b/a-b_000001_000019']


def test_missing_test_split_is_skipped_with_a_note(repo_root, tmp_path):
    root = tmp_path / 'cityscapes'
    build_tree(root, [row for row in LAYOUT if row[0] != 'test'])
    result = run_script(repo_root, '--root', root)
    assert result.returncode == 0, result.stderr
    assert 'note:' in result.stdout and 'test' in result.stdout
    assert sorted(path.name for path in (root / 'data_lists').iterdir()) == ['train.txt', 'val.txt']


def test_test_split_needs_no_labels(tmp_path):
    root = tmp_path / 'c'
    build_tree(root)
    for label in (root / 'gtFine' / 'test').rglob('*.png'):
        label.unlink()
    assert list_split(root, 'test') == ['berlin/berlin_000001_000019', 'berlin/berlin_000002_000019']


def test_missing_root(repo_root, tmp_path):
    missing = tmp_path / 'not_here'
    assert_one_line_error(run_script(repo_root, '--root', missing), missing)


def test_missing_leftimg8bit(repo_root, tmp_path):
    (tmp_path / 'gtFine').mkdir()
    assert_one_line_error(run_script(repo_root, '--root', tmp_path), tmp_path / 'leftImg8bit')


def test_missing_label_names_the_first_missing_file(repo_root, tmp_path):
    root = tmp_path / 'cityscapes'
    build_tree(root)
    first = root / 'gtFine' / 'val' / 'frankfurt' / 'frankfurt_000009_000019_gtFine_labelIds.png'
    later = root / 'gtFine' / 'val' / 'munster' / 'munster_000004_000019_gtFine_labelIds.png'
    first.unlink()
    later.unlink()
    result = run_script(repo_root, '--root', root)
    assert_one_line_error(result, first)
    assert str(later) not in result.stderr
    assert not (root / 'data_lists').exists()  # nothing written before every check passed


def test_list_split_errors(tmp_path):
    root = tmp_path / 'c'
    build_tree(root, [('train', 'aachen', ['000001'])])
    with pytest.raises(InputError, match='missing'):
        list_split(root, 'val')
    (root / 'leftImg8bit' / 'test' / 'empty_city').mkdir(parents=True)
    with pytest.raises(InputError, match='no <city>'):
        list_split(root, 'test')
