"""prepare_coco.sh and convert_coco.py on a stand-in for AdvSemiSeg's COCO DeepLabV2 file."""
import json
import os
import subprocess
import sys

import pytest
import torch

import convert_coco
from models import deeplab_v2
from utils.checkpoints import load_checkpoint, load_model_state

OFFLINE_URL = 'http://127.0.0.1:9/resnet101COCO-41f33a49.pth'


def run_prepare(repo_root, cwd, *args, url=OFFLINE_URL):
    env = dict(os.environ, PYTHON=sys.executable, COCO_URL=url)
    return subprocess.run(['bash', str(repo_root / 'prepare_coco.sh'), *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def fake_coco(shared_dir, tmp_path_factory):
    """Random tensors with the real file's 528 keys and shapes, saved as a plain state dict."""
    keys = json.loads((shared_dir / 'reference' / 'advsemiseg_coco_keys.json').read_text())
    generator = torch.Generator().manual_seed(1234)
    state = {key: torch.randn(shape, generator=generator) for key, shape in keys}
    path = tmp_path_factory.mktemp('download') / 'resnet101COCO-41f33a49.pth'
    torch.save(state, path)
    return path, state


def test_prepare_coco_converts_both_datasets(repo_root, tmp_path, fake_coco):
    source_path, source = fake_coco
    assert len(source) == 528
    result = run_prepare(repo_root, tmp_path, source_path)
    assert result.returncode == 0, result.stderr
    assert 'voc_coco_resnet101.pt: 528 tensors matched, 0 not matched' in result.stdout
    assert 'city_coco_resnet101.pt: 520 tensors matched, 8 not matched' in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 1 and '41f33a49' in warnings[0]

    for dataset, num_classes in (('voc', 21), ('city', 19)):
        path = tmp_path / f'{dataset}_coco_resnet101.pt'
        checkpoint = load_checkpoint(path, num_classes=num_classes)
        model = deeplab_v2(num_classes)
        load_model_state(model, checkpoint, path)
        state = model.state_dict()
        copied = 0
        for key, tensor in source.items():
            if key.startswith('layer5.conv2d_list.'):
                target = 'classifier.0.convs.' + key[len('layer5.conv2d_list.'):]
            else:
                target = 'backbone.' + key
            if dataset == 'voc' or not key.startswith('layer5.'):
                assert torch.equal(state[target], tensor), target
                copied += 1
            else:
                assert state[target].shape[0] == 19 and tensor.shape[0] == 21
                assert not torch.equal(state[target][:19], tensor[:19])
        assert copied == (528 if dataset == 'voc' else 520)

    city = load_checkpoint(tmp_path / 'city_coco_resnet101.pt')['model']
    for i in range(4):
        assert city[f'classifier.0.convs.{i}.weight'].shape == (19, 2048, 3, 3)
        assert city[f'classifier.0.convs.{i}.bias'].shape == (19,)
        assert torch.count_nonzero(city[f'classifier.0.convs.{i}.bias']) == 0
        assert abs(city[f'classifier.0.convs.{i}.weight'].std().item() - 0.01) < 5e-4
    # The head that did not fit is the one a model built right after seeding torch with 0 has.
    torch.manual_seed(0)
    seeded = deeplab_v2(19).state_dict()
    for i in range(4):
        assert torch.equal(seeded[f'classifier.0.convs.{i}.weight'],
                           city[f'classifier.0.convs.{i}.weight'])


def test_prepare_coco_offline_fails_in_one_line(repo_root, tmp_path):
    result = run_prepare(repo_root, tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('error: cannot download ' + OFFLINE_URL)
    assert 'prepare_coco.sh' in lines[0]
    assert sorted(os.listdir(tmp_path)) == []  # no half-downloaded file left behind


def test_prepare_coco_reuses_a_file_already_here(repo_root, tmp_path):
    # A file the converter refuses at once: enough to see that no download was tried.
    torch.save([1, 2], tmp_path / 'resnet101COCO-41f33a49.pth')
    result = run_prepare(repo_root, tmp_path)
    assert 'using resnet101COCO-41f33a49.pth' in result.stdout
    assert result.returncode == 2
    assert 'not a plain state dict' in result.stderr.splitlines()[-1]
    assert 'downloading' not in result.stdout


def test_prepare_coco_missing_argument_file(repo_root, tmp_path):
    result = run_prepare(repo_root, tmp_path, 'nothere.pth')
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: nothere.pth: no such file'


@pytest.mark.parametrize('content', [[1, 2], {'model': {'a': torch.zeros(1)}},
                                     {'fc.weight': torch.zeros(2)}],
                         ids=['list', 'already-converted', 'no-key-matches'])
def test_convert_refuses_other_files(tmp_path, capsys, content):
    source = tmp_path / 'odd.pth'
    torch.save(content, source)
    code = convert_coco.main([str(source), '--dataset', 'voc', '--output',
                              str(tmp_path / 'out.pt')])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'odd.pth' in err and '\n' not in err
    assert not (tmp_path / 'out.pt').exists()



def make_text(path):
    path.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:41f3\n')


def make_whole_network(path):
    torch.save(torch.nn.Conv2d(3, 8, 3), path)   # torch.save(model), not its state dict


@pytest.mark.parametrize('make,message', [
    (make_text, "not a PyTorch file (it looks like text: 'version https://git-lfs.github.com/spec/v1')"),
    (make_whole_network, 'holds a whole pickled network (torch.nn.modules.conv.Conv2d) rather '
                         'than a state dict: load it with the code that saved it and save '
                         'model.state_dict() instead'),
    (lambda path: path.write_bytes(b''), 'not a PyTorch file (it is empty)'),
    (lambda path: path.mkdir(), 'a folder, not a file: expected resnet101COCO-41f33a49.pth'),
], ids=['text', 'whole-network', 'empty', 'folder'])
def test_convert_names_what_an_unusable_file_is(tmp_path, capsys, make, message):
    """Each named for what it is, in one line without torch's advice on loading trusted files
    (which quoted terminal colour codes) and without "no such file" for a folder."""
    path = tmp_path / 'resnet101COCO-41f33a49.pth'
    make(path)
    code = convert_coco.main([str(path), '--dataset', 'voc', '--output', str(tmp_path / 'out.pt')])
    assert code == 2
    assert capsys.readouterr().err == f'error: {path}: {message}\n'
    assert not (tmp_path / 'out.pt').exists()
