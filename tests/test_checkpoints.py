"""Checkpoints: full round trip, the original program's format, atomic saves, bad files."""
import argparse
import random
from pathlib import Path

import pytest
import torch

from models import deeplab_v2
from utils.checkpoints import load_checkpoint, load_model_state, save_checkpoint
from utils.errors import InputError, OutputError, TrainingDiverged


def tiny(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return deeplab_v2(num_classes, backbone='resnet14')


def trained_parts(model):
    """An optimizer with momentum buffers, a stepped poly schedule and a non-default scaler."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10, power=0.9)
    scaler = torch.amp.GradScaler('cpu', init_scale=512.0, growth_interval=7)
    model.train()
    x = torch.randn(2, 3, 33, 33)
    for _ in range(2):
        optimizer.zero_grad()
        model(x)['out'].square().mean().backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    return optimizer, scheduler, scaler


def assert_one_line_naming(error, path):
    message = str(error.value)
    assert path.name in message
    assert '\n' not in message


def test_round_trip_restores_model_and_training_state(tmp_path):
    model = tiny()
    optimizer, scheduler, scaler = trained_parts(model)
    rng = torch.get_rng_state()
    py_rng = random.getstate()
    path = tmp_path / 'runs' / 'exp.pt'  # parent folder does not exist yet
    save_checkpoint(path, model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    step=2, best_miou=0.25, num_classes=5,
                    settings=argparse.Namespace(lr=0.01, split='106', st_epochs=(6, 6),
                                                continue_from=Path('runs/fs.pt')),
                    extra={'torch_rng': rng, 'python_rng': py_rng})
    assert path.is_file() and not (tmp_path / 'runs' / 'exp.pt.tmp').exists()

    checkpoint = load_checkpoint(path, num_classes=5)
    assert checkpoint['format'] == 'dstcbc-v1'
    assert checkpoint['step'] == 2 and checkpoint['best_miou'] == 0.25
    assert checkpoint['num_classes'] == 5
    # JSON-like, as the settings are meant to be printed and compared with a later run's.
    assert checkpoint['settings'] == {'lr': 0.01, 'split': '106', 'st_epochs': [6, 6],
                                      'continue_from': 'runs/fs.pt'}
    assert torch.equal(checkpoint['torch_rng'], rng)
    random.setstate(checkpoint['python_rng'])
    assert random.getstate() == py_rng

    fresh = tiny(seed=1)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(x)['out'], model(x)['out'])
    load_model_state(fresh, checkpoint, path)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x)['out'], model(x)['out'])

    new_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    new_scheduler = torch.optim.lr_scheduler.PolynomialLR(new_optimizer, total_iters=10,
                                                          power=0.9)
    new_scaler = torch.amp.GradScaler('cpu')
    new_optimizer.load_state_dict(checkpoint['optimizer'])
    new_scheduler.load_state_dict(checkpoint['lr_scheduler'])
    new_scaler.load_state_dict(checkpoint['scaler'])
    # lr after 2 of 10 poly steps, computed independently: 0.01 * (1 - 2/10)^0.9
    assert new_optimizer.param_groups[0]['lr'] == pytest.approx(0.01 * 0.8 ** 0.9)
    assert new_optimizer.param_groups[0]['weight_decay'] == 5e-4
    assert new_scheduler.last_epoch == 2
    assert new_scaler.get_scale() == 512.0 and new_scaler.get_growth_interval() == 7
    old_state = optimizer.state_dict()['state']
    new_state = new_optimizer.state_dict()['state']
    assert old_state.keys() == new_state.keys() and len(new_state) > 0
    for key in old_state:
        assert torch.equal(old_state[key]['momentum_buffer'], new_state[key]['momentum_buffer'])


def test_optional_fields_absent_come_back_as_none(tmp_path):
    path = tmp_path / 'plain.pt'
    save_checkpoint(path, tiny(), num_classes=5)
    checkpoint = load_checkpoint(path)
    for key in ('optimizer', 'lr_scheduler', 'scaler', 'best_miou', 'settings'):
        assert checkpoint[key] is None
    assert checkpoint['step'] == 0


def test_original_program_format_loads(tmp_path):
    model = tiny(21)
    optimizer, scheduler, _ = trained_parts(model)
    path = tmp_path / 'fs_voc_106-0.pt'
    amp_state = {'loss_scaler0': {'loss_scale': 65536.0, 'unskipped': 3}}
    torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'lr_scheduler': scheduler.state_dict(), 'amp': amp_state}, path)
    checkpoint = load_checkpoint(path, num_classes=21)
    assert checkpoint['amp'] == amp_state
    assert checkpoint['scaler'] is None and checkpoint['step'] is None
    fresh = tiny(21, seed=3)
    load_model_state(fresh, checkpoint, path)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_bare_state_dict_is_wrapped(tmp_path):
    model = tiny()
    path = tmp_path / 'bare.pt'
    torch.save(model.state_dict(), path)
    checkpoint = load_checkpoint(path, num_classes=5)
    assert set(checkpoint['model']) == set(model.state_dict())
    load_model_state(tiny(seed=2), checkpoint, path)


def test_missing_file(tmp_path):
    path = tmp_path / 'nothere.pt'
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert_one_line_naming(error, path)


def test_truncated_file(tmp_path):
    path = tmp_path / 'cut.pt'
    save_checkpoint(path, tiny(), num_classes=5)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert_one_line_naming(error, path)


def test_text_file(tmp_path):
    path = tmp_path / 'notes.pt'
    path.write_text('not a checkpoint\nat all\n')
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert_one_line_naming(error, path)


LFS_POINTER = 'version https://git-lfs.github.com/spec/v1\noid sha256:41f3\nsize 198715\n'


@pytest.mark.parametrize('content,what', [
    (LFS_POINTER.encode(), "it looks like text: 'version https://git-lfs.github.com/spec/v1'"),
    (b'<html><body>404 Not Found</body></html>\n',
     "it looks like text: '<html><body>404 Not Found</body></html>'"),
    (b'', 'it is empty'),
    (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR', 'binary data of another format'),
], ids=['git-lfs-pointer', 'html-page', 'empty', 'png'])
def test_a_file_that_is_no_torch_file_is_named_for_what_it_is(tmp_path, content, what):
    # torch reports these as a weights_only refusal, a KeyError or an EOFError: none says what
    # the file is, and the refusal sent users after "Python objects" that are not there.
    path = tmp_path / 'fs_voc_106-0.pt'
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert str(error.value) == f'{path}: not a PyTorch checkpoint file ({what})'


def test_a_truncated_file_is_named_truncated_without_torch_advice(tmp_path):
    path = tmp_path / 'cut.pt'
    save_checkpoint(path, tiny(), num_classes=5)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f'{path}: a truncated or damaged PyTorch file (RuntimeError: ')
    assert 'internal miniz error' not in message and '\n' not in message


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_a_whole_pickled_network_is_named_with_what_to_save(tmp_path, zip_format):
    path = tmp_path / 'whole.pt'
    torch.save(tiny(), path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f'{path}: holds a whole pickled network (models.deeplab_v2.DeepLabV2) rather than a '
        'state dict: load it with the code that saved it and save model.state_dict() instead')


def test_a_pickle_of_another_program_is_one_message_without_warnings(tmp_path):
    import pickle
    import warnings
    path = tmp_path / 'other.pt'
    path.write_bytes(pickle.dumps({'a': 1}, protocol=4))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(InputError) as error:
        warnings.simplefilter('always')
        load_checkpoint(path)
    assert str(error.value) == (f'{path}: a truncated or damaged PyTorch file, or a pickle not '
                                'written by torch.save (UnpicklingError: Unsupported operand 149)')
    assert [str(warning.message) for warning in caught] == []   # torch's protocol warning


def test_escape_codes_of_torch_messages_are_removed():
    from utils.checkpoints import _one_line
    error = RuntimeError('load failed, \x1b[1mdo this only if you trust it\x1b[0m.\n\t(1) retry')
    assert _one_line(error) == 'RuntimeError: load failed, do this only if you trust it. (1) retry'


def test_wrong_class_count(tmp_path):
    path = tmp_path / 'city.pt'
    save_checkpoint(path, tiny(19), num_classes=19)
    with pytest.raises(InputError) as error:
        load_checkpoint(path, num_classes=21)
    assert_one_line_naming(error, path)
    assert '19 classes' in str(error.value) and 'needs 21' in str(error.value)


@pytest.mark.parametrize('content', [[1, 2, 3], torch.zeros(3), {'weights': torch.zeros(3)}],
                         ids=['list', 'tensor', 'no-model-key'])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / 'odd.pt'
    torch.save(content, path)
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert_one_line_naming(error, path)


def test_unconverted_advsemiseg_file_points_to_prepare_coco(tmp_path):
    path = tmp_path / 'resnet101COCO.pth'
    torch.save({'conv1.weight': torch.zeros(1), 'layer5.conv2d_list.0.bias': torch.zeros(2)},
               path)
    with pytest.raises(InputError, match='prepare_coco.sh') as error:
        load_checkpoint(path)
    assert_one_line_naming(error, path)


def test_pickled_objects_are_refused_naming_the_first(tmp_path):
    path = tmp_path / 'unsafe.pt'
    torch.save({'model': {}, 'settings': random.Random(0)}, path)
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f'{path}: holds pickled Python objects (random.Random) that the safe loader '
        '(weights_only=True) refuses: save only tensors and plain values (for a network, '
        'model.state_dict())')


def test_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / 'partial.pt'
    state = tiny().state_dict()
    del state['backbone.conv1.weight'], state['backbone.bn1.bias'], state['backbone.bn1.weight']
    state['aux.weight'] = torch.zeros(1)
    torch.save({'model': state}, path)
    checkpoint = load_checkpoint(path, num_classes=5)
    with pytest.raises(InputError) as error:
        load_model_state(tiny(), checkpoint, path)
    assert_one_line_naming(error, path)
    message = str(error.value)
    assert '3 keys missing' in message and 'backbone.conv1.weight' in message
    assert '1 unexpected' in message and 'aux.weight' in message


def test_other_backbone_is_refused(tmp_path):
    path = tmp_path / 'r14.pt'
    save_checkpoint(path, tiny(), num_classes=5)
    torch.manual_seed(0)
    resnet50_model = deeplab_v2(5, backbone='resnet50')
    with pytest.raises(InputError, match='keys missing') as error:
        load_model_state(resnet50_model, load_checkpoint(path, num_classes=5), path)
    assert_one_line_naming(error, path)


def test_shape_mismatch_is_one_line(tmp_path):
    path = tmp_path / 'shapes.pt'
    save_checkpoint(path, tiny(19), num_classes=19)
    checkpoint = load_checkpoint(path)  # no class count given: the check falls to the load
    with pytest.raises(InputError) as error:
        load_model_state(tiny(21), checkpoint, path)
    assert_one_line_naming(error, path)
    assert '8 tensors have the wrong shape' in str(error.value)


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'best.pt'
    first = tiny(seed=0)
    save_checkpoint(path, first, step=1, num_classes=5)
    before = path.read_bytes()

    def save_half_then_fail(obj, file, *args, **kwargs):
        file.write(b'PK\x03\x04 partial archive')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', save_half_then_fail)
    with pytest.raises(OutputError) as error:
        save_checkpoint(path, tiny(seed=1), step=2, num_classes=5)
    monkeypatch.undo()
    assert str(error.value) == f'{path}: cannot write checkpoint (disk full)'

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pt']
    checkpoint = load_checkpoint(path)
    assert checkpoint['step'] == 1
    for key, value in first.state_dict().items():
        assert torch.equal(checkpoint['model'][key], value)


def test_non_finite_weights_are_never_saved(tmp_path):
    path = tmp_path / 'best.pt'
    save_checkpoint(path, tiny(seed=0), step=1, num_classes=5)
    before = path.read_bytes()
    broken = tiny(seed=1)
    with torch.no_grad():
        next(broken.parameters())[0].fill_(float('nan'))
    with pytest.raises(TrainingDiverged, match='NaN or infinite'):
        save_checkpoint(path, broken, step=2, num_classes=5)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pt']


def test_unloadable_extra_is_refused_at_save_time(tmp_path):
    path = tmp_path / 'x.pt'
    with pytest.raises(TypeError, match='Random'):
        save_checkpoint(path, tiny(), num_classes=5, extra={'rng': random.Random(0)})
    with pytest.raises(ValueError, match='model'):
        save_checkpoint(path, tiny(), num_classes=5, extra={'model': 1})
    assert not path.exists()


def test_subclasses_of_plain_values_are_stored_as_plain_values(tmp_path):
    """torch.__version__ is a str subclass and numpy scalars subclass float: both must load back."""
    import numpy as np
    path = tmp_path / 'versions.pt'
    save_checkpoint(path, tiny(), num_classes=5,
                    settings={'torch': torch.__version__, 'miou': np.float64(0.25), 'flag': np.bool_(True)},
                    extra={'value': np.float32(1.5)})
    checkpoint = load_checkpoint(path, num_classes=5)
    assert checkpoint['settings']['torch'] == str(torch.__version__)
    assert type(checkpoint['settings']['torch']) is str
    assert checkpoint['settings']['miou'] == 0.25 and checkpoint['value'] == 1.5


def test_a_checkpoint_whose_description_is_gone_says_so(tmp_path):
    """An own dataset's checkpoint whose description was moved fell back to VOC with only 'the
    default, voc', and the 5-vs-21 classes refusal that followed did not say why."""
    from utils.checkpoints import dataset_for_checkpoint

    gone = tmp_path / 'moved' / 'cracks.yaml'
    info, why = dataset_for_checkpoint({'settings': {'dataset_description': str(gone), 'dataset': str(gone)}})
    assert info.name == 'voc' and why == f'the default, voc: {gone}, which it was trained on, is not there'
    assert dataset_for_checkpoint({'settings': {}})[1] == 'the default, voc'
