"""Faults a careless user tried that went wrong in silence or with a traceback: an --overwrite run
stopped midway left two runs' files under one name, flags that train nothing or cannot train,
a round continued from the wrong kind of checkpoint, a seed too large for torch's generators,
and a precision that is slow on a CPU without a word.

Runs go through main.main in this process (helpers.run_main), on the session's synthetic set and
its finished supervised run 'sup' (conftest.py)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import main
import utils.context
import utils.supervised
from conftest import SUPERVISED_FLAGS
from helpers import TINY_FLAGS, run_main
from models import deeplab_v2
from test_guards import one_line, start_checkpoint, stop_training_after
from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.errors import InputError
from utils.experiment import describe_precision
from utils.guards import feature_map_size
from utils.training import EpochBatchSampler

SPLIT = ['--split', '8', '--sets-id', '0']


@pytest.fixture
def work(supervised_checkpoint, tmp_path):
    """A copy of the folder holding the finished state 2 run 'sup' (sup.pt, logs/sup/...)."""
    return Path(shutil.copytree(supervised_checkpoint.parent, tmp_path / 'work'))


def lines_of(completed):
    return [line for line in completed.stderr.splitlines() if line.strip()]


def settings_of(folder, name):
    return json.loads((folder / 'logs' / name / 'settings.json').read_text())


# --- 1. an --overwrite run takes the name over at one moment ---------------------------------------

def test_an_overwrite_run_stopped_after_its_first_validation_leaves_only_its_own_files(
        work, synthetic_voc, monkeypatch):
    """It left its own sup.pt beside the earlier run's results.json and settings.json: the results
    described a checkpoint that no longer existed. Its first best checkpoint now takes the name
    over: the earlier results go and its own settings are written at that moment."""
    args = [*SUPERVISED_FLAGS[:4], '--data-root', synthetic_voc, *SPLIT, '--init-epochs', 3, '--val-num-steps', 1,
            '--save-every', 0, *TINY_FLAGS, '--overwrite']
    with monkeypatch.context() as patch:
        stop_training_after(patch, 2)   # in step 2: step 1 and its validation are done
        completed = run_main(work, *args)
    assert completed.returncode == 130, completed.stderr[-2000:]
    assert not (work / 'logs' / 'sup' / 'results.json').exists()
    assert settings_of(work, 'sup')['init_epochs'] == 3
    best = load_checkpoint(work / 'sup.pt')
    assert best['step'] == 1 and best['settings']['init_epochs'] == 3
    completed = run_main(work, *args, '--resume')
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads((work / 'logs' / 'sup' / 'results.json').read_text())['steps'] == 3


class Killed(BaseException):
    """kill -9 right after a save: nothing after it runs."""


def test_an_overwrite_run_removes_the_earlier_unfinished_state_when_it_takes_the_name_over(
        synthetic_voc, tmp_path, monkeypatch):
    """An earlier run's last.pt stayed beside the new run's settings.json and best checkpoint
    until the new run saved its own last.pt: killed before that, the folder held two runs, and
    --resume would continue the earlier one."""
    args = ['--state', 2, '--exp-name', 'run', '--data-root', synthetic_voc, *SPLIT, '--val-num-steps', 1,
            '--save-every', 0, *TINY_FLAGS]
    with monkeypatch.context() as patch:
        stop_training_after(patch, 0)
        assert run_main(tmp_path, *args, '--init-epochs', 5).returncode == 130
    last = tmp_path / 'logs' / 'run' / 'last.pt'
    assert load_checkpoint(last)['settings']['init_epochs'] == 5
    settings_before = (tmp_path / 'logs' / 'run' / 'settings.json').read_bytes()
    real_save_best = utils.context.RunContext.save_best

    def save_then_die(context, *save_args, **kwargs):
        assert (tmp_path / 'logs' / 'run' / 'settings.json').read_bytes() == settings_before, \
            'the settings are the earlier run\'s until the first replacing write'
        real_save_best(context, *save_args, **kwargs)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(utils.context.RunContext, 'save_best', save_then_die)
        with pytest.raises(Killed):
            run_main(tmp_path, *args, '--init-epochs', 2, '--overwrite')
    assert not last.exists(), 'the earlier run\'s unfinished state went when the new run took the name over'
    assert settings_of(tmp_path, 'run')['init_epochs'] == 2
    assert load_checkpoint(tmp_path / 'run.pt')['settings']['init_epochs'] == 2


# --- 2. a supervised run of no epochs --------------------------------------------------------------

def test_state_2_with_no_epochs_is_refused_naming_the_flag(synthetic_voc, tmp_path):
    """It exited 0 with a results.json naming a checkpoint never written."""
    completed = run_main(tmp_path, '--state', 2, '--exp-name', 'none', '--data-root', synthetic_voc, *SPLIT,
                         '--init-epochs', 0, *TINY_FLAGS)
    assert completed.returncode == 2
    one_line(lines_of(completed), '--init-epochs 0', '--state 2', 'trains nothing')
    assert not (tmp_path / 'logs').exists() and not (tmp_path / 'none.pt').exists()


# --- 3. what the starting checkpoint of state 1 records -------------------------------------------

def state_1_checkpoint(source, path, round_number=1, iters=None, **changed):
    """`source` as a state 1 run would have saved it (its settings say state 1 and the run's
    --round, or None and --iters for a run of all rounds; `changed` other settings)."""
    checkpoint = load_checkpoint(source)
    model = deeplab_v2(21, backbone='resnet14')
    model.load_state_dict(checkpoint['model'])
    settings = dict(checkpoint['settings'], state=1, round=round_number, exp_name='st_round1', **changed)
    if iters is not None:
        settings['iters'] = iters
    save_checkpoint(path, model, best_miou=checkpoint['best_miou'], num_classes=21, settings=settings,
                    extra={'architecture': checkpoint['architecture'], 'validation': checkpoint['validation']})
    return path


def round_two(folder, data_root, start, round_number=2):
    return run_main(folder, '--state', 1, '--exp-name', f'st_round{round_number}', '--continue-from', start,
                    '--data-root', data_root, *SPLIT, '--round', round_number, '--iters', round_number,
                    '--st-epochs', *[0] * round_number, '--init-epochs', 0, *TINY_FLAGS)


def test_round_2_from_a_supervised_checkpoint_is_refused(work, synthetic_voc):
    """It was accepted in silence: round 2 ran at round 2's ratio from the supervised baseline,
    as if round 1 had been run."""
    completed = round_two(work, synthetic_voc, 'sup.pt')
    assert completed.returncode == 2
    one_line(lines_of(completed), '--round 2', 'round 1\'s checkpoint', 'sup.pt was written by a state 2 run')
    assert not (work / 'st_round2.pt').exists()


@pytest.mark.parametrize('written_round,iters,round_number,fragments', [
    (1, None, 3, ('--round 3 continues from round 2\'s checkpoint', 'written by a --round 1 run',
                  'run --round 2 next')),
    (2, None, 2, ('--round 2 continues from round 1\'s checkpoint', 'written by a --round 2 run')),
    (None, 5, 2, ('--round 2 continues from round 1\'s checkpoint', 'a run of all 5 rounds (no --round)'))])
def test_a_round_from_another_round_s_checkpoint_is_refused(work, synthetic_voc, written_round, iters,
                                                            round_number, fragments):
    """Only the state was compared: round 3 from round 1's checkpoint (round 2 skipped), round 2
    from its own checkpoint (round 2 twice) or from a run of all rounds was accepted in silence."""
    state_1_checkpoint(work / 'sup.pt', work / 'st.pt', round_number=written_round, iters=iters)
    completed = round_two(work, synthetic_voc, 'st.pt', round_number=round_number)
    assert completed.returncode == 2, completed.stderr[-2000:]
    one_line(lines_of(completed), 'st.pt', *fragments)
    assert not (work / f'st_round{round_number}.pt').exists()


@pytest.mark.parametrize('changed,fragments', [
    ({'split': 4}, ('ran with --split 4; this run has --split 8', 'continue with --split 4')),
    ({'sets_id': 2}, ('ran with --sets-id 2; this run has --sets-id 0',)),
    ({'dataset_digest': 'another'}, ('ran on the dataset described by', 'as it was then')),
    ({'lists': 'labeled list edited'}, ('8_labeled_0.txt changed since that round read it', 'restore the list'))])
def test_a_round_continues_only_its_own_chain(work, synthetic_voc, changed, fragments):
    """Round 2 from round 1 of another split, set, dataset description or of lists edited since
    was accepted in silence; paper_table.py then counted it as that split's DST-CBC result."""
    if 'lists' in changed:
        recorded = load_checkpoint(work / 'sup.pt')['settings']['lists']
        changed = {'lists': {name: dict(entry, ids_sha256='0' * 64) if 'labeled' in name else entry
                             for name, entry in recorded.items()}}
    state_1_checkpoint(work / 'sup.pt', work / 'st.pt', **changed)
    completed = round_two(work, synthetic_voc, 'st.pt')
    assert completed.returncode == 2, completed.stderr[-2000:]
    one_line(lines_of(completed), '--round 2 continues the chain of --continue-from st.pt (round 1)', *fragments)
    assert not (work / 'st_round2.pt').exists()


@pytest.mark.parametrize('start', ['state 1', 'records nothing'])
def test_round_2_continues_from_a_state_1_checkpoint_or_one_that_records_nothing(work, synthetic_voc, start):
    path = (state_1_checkpoint(work / 'sup.pt', work / 'round1.pt') if start == 'state 1'
            else start_checkpoint(work / 'converted.pt'))
    completed = round_two(work, synthetic_voc, path.name)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads((work / 'logs' / 'st_round2' / 'results.json').read_text())['round'] == 2


@pytest.mark.parametrize('start,init_epochs,warned', [
    ('sup.pt', 1, True), ('sup.pt', 0, False), ('untrained.pt', 1, False)])
def test_a_warm_up_from_a_trained_checkpoint_is_warned_in_the_log(work, synthetic_voc, start, init_epochs,
                                                                   warned):
    """State 1 from a trained baseline with the default warm-up (--init-epochs 30) retrains it and
    takes the warm-up's best as the bar: it can end below where it started, without a word."""
    start_checkpoint(work / 'untrained.pt')   # records nothing, carries no mIoU
    completed = run_main(work, '--state', 1, '--exp-name', 'st', '--continue-from', start, '--data-root',
                         synthetic_voc, *SPLIT, '--init-epochs', init_epochs, '--iters', 1, '--st-epochs', 0,
                         *TINY_FLAGS)
    assert completed.returncode == 0, completed.stderr[-2000:]
    warnings = [line for line in (work / 'logs' / 'st' / 'run.log').read_text().splitlines()
                if 'warning:' in line and 'warm-up' in line]   # not the warnings about the data's classes
    if warned:
        assert len(warnings) == 1, warnings
        for fragment in ('sup.pt is already trained', 'written by a state 2 run', '--init-epochs 1',
                         'end below the score it starts from', 'pass --init-epochs 0, as the scripts do'):
            assert fragment in warnings[0], (fragment, warnings[0])
    else:
        assert warnings == []


# --- 4. seeds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', ['10000000000000', '-1', '2147483648', 'seven'])
def test_out_of_range_seeds_are_refused_at_parse_time(tmp_path, seed):
    """--seed 10000000000000 was a traceback at the first batch (torch's generator takes seeds
    below 2**64, and the samplers multiply the seed by about 10**9)."""
    completed = run_main(tmp_path, '--state', 2, '--seed', seed)
    assert completed.returncode == 2
    one_line(lines_of(completed), '--seed', '0..2147483647', seed)


def test_the_largest_seed_fits_every_generator_it_seeds():
    """The bound is the real one: the samplers overflow torch's generator far above it, never at it."""
    largest = main.parse_args(['--state', '2', '--seed', '2147483647']).seed
    for offset in (1, 10, 100 + 4):   # context.seed(offset) of the warm-up and the rounds
        sampler = EpochBatchSampler(24, 4, largest * 1000 + offset, start_batch=10_000)
        batch = next(sampler.global_batches())
        torch.Generator().manual_seed(batch[0][1])   # a sample's augmentation seed
    with pytest.raises(ValueError, match='Overflow'):   # what --seed 10000000000000 gave
        next(EpochBatchSampler(24, 4, 10_000_000_000_000 * 1000 + 1).global_batches())


# --- 5. crops too small for BatchNorm --------------------------------------------------------------

@pytest.mark.parametrize('backbone', ['resnet14', 'resnet101'])
def test_the_feature_map_size_is_the_networks(backbone):
    model = deeplab_v2(21, backbone=backbone).eval()
    with torch.no_grad():
        for height, width in [(1, 1), (7, 8), (8, 8), (9, 8), (8, 9), (16, 17), (17, 16), (25, 33), (48, 48)]:
            out = model.backbone(torch.zeros(1, 3, height, width))['out']
            assert tuple(out.shape[-2:]) == feature_map_size(height, width), (height, width)


def test_a_crop_with_a_one_cell_feature_map_is_refused_unless_frozen_bn(synthetic_voc, tmp_path):
    """--batch-size 1 --crop-size 8 8 stopped at the first step with BatchNorm's traceback
    ("Expected more than 1 value per channel when training"); a batch of one image can also come
    from the last batch of an epoch or a process's share, so any batch size is refused."""
    common = ['--state', 2, '--data-root', synthetic_voc, *SPLIT, '--init-epochs', 1, *TINY_FLAGS,
              '--batch-size', 1]
    completed = run_main(tmp_path, *common, '--exp-name', 'tiny', '--crop-size', 8, 8)
    assert completed.returncode == 2, completed.stderr[-2000:]
    one_line(lines_of(completed), '--crop-size 8 8', 'single cell', '--crop-size 9 8', '--frozen-bn')
    for state in ('1', '2'):
        with pytest.raises(InputError, match='--crop-size 5 3'):
            main.parse_args(['--state', state, '--crop-size', '5', '3', '--batch-size', '8'])
    assert main.parse_args(['--state', '3', '--crop-size', '8', '8']).crop_size == [8, 8]   # trains nothing
    for name, flags in (('smallest', ['--crop-size', 9, 8]), ('frozen', ['--crop-size', 8, 8, '--frozen-bn'])):
        completed = run_main(tmp_path, *common, '--exp-name', name, *flags)
        assert completed.returncode == 0, completed.stderr[-2000:]


# --- 6. precision ----------------------------------------------------------------------------------------

def test_fp16_on_a_cpu_says_it_is_slow():
    """--precision fp16 on a CPU ran many times slower than float32 with no word in the log."""
    text = describe_precision('fp16', False, torch.device('cpu'))
    assert 'float16' in text and 'times slower than float32' in text and 'loss scaling' in text
    assert 'slower' not in describe_precision('fp16', False, torch.device('cuda'))
    assert 'slower' not in describe_precision('fp32', False, torch.device('cpu'))
