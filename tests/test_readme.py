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
