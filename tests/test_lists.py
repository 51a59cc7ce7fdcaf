"""Every list is read one way (data_processing.read_numbered_list): UTF-8 whatever the locale, a
byte-order mark dropped, Windows line endings accepted, other encodings and an id listed twice
refused in one line naming the file."""
import os
import subprocess
import sys

import pytest

import data_processing as dp
import generate_splits
from utils.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def list_file(folder, data, name='list.txt'):
    path = folder / name
    path.write_bytes(data)
    return path


def refusal(path):
    """The one-line message with which `read_list` refuses `path`."""
    with pytest.raises(InputError) as error:
        dp.read_list(path)
    message = str(error.value)
    assert '\n' not in message and str(path) in message
    return message


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    path = list_file(tmp_path, b'\xef\xbb\xbf2007_000032\n2007_000039\n')
    assert dp.read_list(path) == ['2007_000032', '2007_000039']
    # generate_splits.py reads the same way: the BOM no longer sorts the first name last
    assert generate_splits.read_list(path) == ['2007_000032', '2007_000039']


def test_windows_line_endings_and_blank_lines(tmp_path):
    path = list_file(tmp_path, b'a\r\nb\r\n\r\n  c  \r\n')
    assert dp.read_list(path) == ['a', 'b', 'c']
    assert dp.read_numbered_list(path) == [(1, 'a'), (2, 'b'), (4, 'c')]


def test_non_ascii_ids_are_read_as_utf8(tmp_path):
    path = list_file(tmp_path, 'caf\u00e9/r\u00f6m\u00f6\n\u6771\u4eac\n'.encode('utf-8'))
    assert dp.read_list(path) == ['caf\u00e9/r\u00f6m\u00f6', '\u6771\u4eac']


@pytest.mark.parametrize('encoding,named', [('utf-16', 'UTF-16'), ('utf-16-be', 'UTF-16'),
                                            ('utf-32', 'UTF-32')])
def test_a_list_saved_as_utf16_or_utf32_is_refused(tmp_path, encoding, named):
    data = '2007_000032\n2007_000039\n'.encode(encoding)
    if encoding == 'utf-16-be':
        data = b'\xfe\xff' + data   # big-endian with its byte-order mark
    message = refusal(list_file(tmp_path, data))
    assert f'is saved as {named}; save it as UTF-8' in message


def test_utf16_without_a_byte_order_mark_is_refused(tmp_path):
    # Valid UTF-8 bytes, but every other one is a NUL: no id in it names a file.
    message = refusal(list_file(tmp_path, 'a\nb\n'.encode('utf-16-le')))
    assert 'NUL' in message and 'save it as UTF-8' in message


def test_bytes_invalid_in_utf8_are_refused_naming_the_line(tmp_path):
    path = list_file(tmp_path, 'plain\ncaf\u00e9\n'.encode('latin-1'))
    message = refusal(path)
    assert 'not UTF-8 text (line 2)' in message and 'save it as UTF-8' in message


def test_an_invisible_character_inside_the_list_is_refused(tmp_path):
    # A second byte-order mark (two lists joined), a no-break space: ids naming no file.
    for text, code in (('a\n\ufeffb\n', 'U+FEFF'), ('a\nb\u00a0c\n', 'U+00A0')):
        message = refusal(list_file(tmp_path, text.encode('utf-8')))
        assert 'line 2' in message and code in message


def test_existing_checks_keep_their_messages(tmp_path):
    assert 'is not a plain id inside the data root' in refusal(list_file(tmp_path, b'a b\n'))
    assert 'line 2: entry' in refusal(list_file(tmp_path, b'a\n../b\n'))
    assert 'is empty (no names)' in refusal(list_file(tmp_path, b'\n \r\n'))
    assert 'does not exist' in refusal(tmp_path / 'absent.txt')
    assert 'is not a file' in refusal(tmp_path)


def test_an_id_listed_twice_is_refused_naming_both_lines(tmp_path):
    path = list_file(tmp_path, b'a\nb\nc\n\nb \n')
    message = refusal(path)
    assert "'b' twice (lines 2 and 5)" in message


def test_a_dataset_list_with_an_id_twice_is_refused_before_any_file_is_read(tmp_path):
    # Twice in one list, a run trained on the image twice and its label writers collided on one
    # temporary file; the refusal comes from reading the list, before its files are checked.
    lists = tmp_path / 'ImageSets' / 'Segmentation'
    lists.mkdir(parents=True)
    path = list_file(lists, b'x1\nx2\nx3\nx1\n', name='twice.txt')
    with pytest.raises(InputError) as error:
        dp.build_dataset(dp.VOC, tmp_path, 'twice', 'gt', None)
    assert str(error.value) == f"list file {path} has 'x1' twice (lines 1 and 4)"


def test_split_input_is_checked_as_dataset_lists_are(tmp_path):
    # generate_splits.py used to accept an entry no run could use.
    with pytest.raises(InputError, match=r'line 2: entry .*not a plain id'):
        generate_splits.read_list(list_file(tmp_path, b'a\n/etc/b\n'))


def run_python(code, env_changes):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(('LC_', 'LANG', 'PYTHONUTF8', 'PYTHONIOENCODING'))}
    env.update(env_changes)
    return subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, encoding='utf-8', timeout=120)


def test_non_ascii_ids_under_the_c_locale(tmp_path):
    """A process started with LC_ALL=C reads a list the same way and opens the file it names;
    with UTF-8 mode off as well (the locale's encoding is then ASCII) the list still reads."""
    (tmp_path / 'caf\u00e9.jpg').write_bytes(b'jpeg')
    path = list_file(tmp_path, '\ufeffcaf\u00e9\n'.encode('utf-8'))
    code = (f'import os, sys, data_processing as dp; path = {str(path)!r}; '
            'names = dp.read_list(path); print(ascii(names)); '
            # the file is opened only in UTF-8 mode: with an ASCII locale no str path can name it
            'sys.flags.utf8_mode and print(open(os.path.join(os.path.dirname(path), '
            'names[0] + ".jpg"), "rb").read())')
    result = run_python(code, {'LC_ALL': 'C'})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['caf\\xe9']", "b'jpeg'"]
    result = run_python(code, {'LC_ALL': 'C', 'PYTHONUTF8': '0'})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['caf\\xe9']"]
