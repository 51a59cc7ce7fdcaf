"""The README's promises point at the tests that keep them: every test its reliability table
names exists, and the two commands it opens with are the ones CI runs."""
import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_reliability_table_names_exists():
    readme = (REPO_ROOT / 'README.md').read_text()
    section = readme.split('## A run never silently goes wrong')[1].split('\n## ')[0]
    named = re.findall(r'`(test_\w+)(?:::(test_\w+))?`', section)
    assert len(named) > 20
    for module, test in named:
        path = REPO_ROOT / 'tests' / f'{module}.py'
        assert path.is_file(), module
        if test:
            functions = {node.name for node in ast.walk(ast.parse(path.read_text()))
                         if isinstance(node, ast.FunctionDef)}
            assert test in functions, f'{module}::{test}'


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / 'README.md').read_text()
    commands = re.findall(r'```bash\n(.+?)\n```', readme.split('## Data')[0])
    assert len(commands) == 2, commands
    ci = (REPO_ROOT / '.ci' / 'run').read_text()
    assert commands[1].strip() in ci, (commands[1], ci)
    assert 'pip install -r requirements.txt' in commands[0] and 'pip install -r requirements.txt' in ci


def test_every_picture_the_readme_shows_is_in_the_repository():
    readme = (REPO_ROOT / 'README.md').read_text()
    pictures = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', readme)
    assert pictures
    for picture in pictures:
        path = REPO_ROOT / picture
        assert path.is_file() and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', picture


def test_the_own_data_description_the_readme_shows_reads_as_it_says(tmp_path):
    """The complete description file of "Your own data" is a valid one, and means what the
    README says it does."""
    from utils.dataset_description import read_description

    section = (REPO_ROOT / 'README.md').read_text().split('## Your own data')[1].split('\n## ')[0]
    text = re.findall(r'```yaml\n(.+?)\n```', section, re.S)[0]
    path = tmp_path / 'cracks' / 'cracks.yaml'
    path.parent.mkdir()
    path.write_text(text)
    info = read_description(path)
    assert info.class_names == ('concrete', 'spalling', 'crack', 'rust')
    assert dict(zip(info.class_names, info.colors))['crack'] == (255, 0, 0)
    assert info.encoding.kind == 'rgb' and info.encoding.ignore_colors == ((255, 255, 255),)
    same_as_describe_writes(section, info, tmp_path / 'made')
    assert info.image_path(info.default_root, 'train/bridge_3/img_0042', '') == \
        path.parent / 'photos' / 'train' / 'bridge_3' / 'img_0042.jpg'
    assert info.label_path(info.default_root, 'a/b', '') == path.parent / 'masks' / 'a' / 'b_mask.png'
    assert (info.eval_fit, info.eval_size, info.crop_size) == ('pad', (505, 505), (321, 321))


def same_as_describe_writes(section, shown, folder):
    """The README's describe_dataset.py command, with its --classes and --ignore, on masks drawn in
    the shown colours with a white void border, names each colour as the shown description does
    (a --classes order other than the colours' sorted one swapped two classes in silence)."""
    import numpy as np
    from PIL import Image

    import describe_dataset
    from helpers import call
    from utils.dataset_description import read_description

    command = re.search(r'python describe_dataset\.py (.+?)\n(?!  )', section.replace('\\\n', ' '), re.S).group(1)
    words = command.split()
    classes, ignore = words[words.index('--classes') + 1], words[words.index('--ignore') + 1]
    for number in range(4):
        mask = np.zeros((20, 24, 3), np.uint8)
        for band, colour in enumerate(shown.colors):
            mask[2 + band * 4:6 + band * 4, 2 + number:22] = colour
        mask[:2], mask[-2:] = 255, 255
        for kind, array, suffix in (('masks', mask, '_mask.png'), ('photos', np.full_like(mask, 90), '.jpg')):
            path = folder / kind / 'train' / 'site' / f'img_{number}{suffix}'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    status, _, err = call(describe_dataset, '--images', folder / 'photos', '--labels', folder / 'masks', '--out',
                          folder / 'cracks.yaml', '--classes', classes, '--ignore', ignore)
    assert status == 0, err
    written = read_description(folder / 'cracks.yaml')
    assert dict(zip(written.class_names, written.colors)) == dict(zip(shown.class_names, shown.colors))
    assert written.encoding.ignore_colors == shown.encoding.ignore_colors
