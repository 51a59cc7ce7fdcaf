"""Training pieces: resumable batch order and per-sample seeds, rank sharding of global batches,
poly lr, round ratios, batch composition, saved state, the finiteness check, frozen BatchNorm."""
import math

import pytest
import torch

from models import deeplab_v2
from utils import distributed
from utils.checkpoints import load_checkpoint, save_checkpoint
from utils.self_training import mixed_batches, round_ratios
from utils.training import (EpochBatchSampler, Runtime, TrainState, build_optimizer, device_batch,
                            build_scheduler, restore_state, sample_seed, set_train_mode,
                            weights_finite)


def indices(batch):
    return [index for index, _ in batch]


def test_every_epoch_is_a_permutation_with_a_short_last_batch():
    sampler = EpochBatchSampler(size=10, batch_size=4, seed=3, num_batches=9)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [sum((indices(b) for b in batches[i:i + 3]), []) for i in (0, 3, 6)]
    for order in epochs:
        assert sorted(order) == list(range(10))
    assert epochs[0] != epochs[1], 'each epoch reshuffles'


def test_sample_seeds_are_a_function_of_seed_epoch_and_position():
    batches = list(EpochBatchSampler(size=10, batch_size=4, seed=3, num_batches=6))
    for number, batch in enumerate(batches):
        epoch, position = divmod(number, 3)
        for offset, (_, seed) in enumerate(batch):
            assert seed == sample_seed(3, epoch, position * 4 + offset)
    seeds = [seed for batch in batches for _, seed in batch]
    assert len(set(seeds)) == len(seeds), 'every sample of every epoch draws its own augmentation'
    # torch seeds its generator from the low 32 bits: those must differ too.
    assert len({seed & 0xFFFFFFFF for seed in seeds}) == len(seeds)
    assert all(0 <= seed < 2 ** 63 for seed in seeds)


def test_starting_mid_stream_continues_the_same_batches():
    full = list(EpochBatchSampler(size=13, batch_size=3, seed=5, num_batches=20))
    for start in (0, 1, 4, 5, 11):
        tail = list(EpochBatchSampler(size=13, batch_size=3, seed=5, start_batch=start, num_batches=20))
        assert tail == full[start:]
    endless = iter(EpochBatchSampler(size=13, batch_size=3, seed=5))
    assert [next(endless) for _ in range(20)] == full


@pytest.mark.parametrize('world_size', [1, 2, 3, 4])
def test_ranks_split_every_global_batch_without_overlap(monkeypatch, world_size):
    """Concatenated in rank order, the ranks' parts are the single-process batch, pairs and all;
    a short last batch leaves some ranks an empty part."""
    single = list(EpochBatchSampler(size=10, batch_size=4, seed=7, num_batches=6))
    parts = []
    for rank in range(world_size):
        monkeypatch.setattr(distributed, 'rank', lambda rank=rank: rank)
        monkeypatch.setattr(distributed, 'world_size', lambda: world_size)
        parts.append(list(EpochBatchSampler(size=10, batch_size=4, seed=7, num_batches=6)))
    for number, batch in enumerate(single):
        assert sum((part[number] for part in parts), []) == batch
        sizes = [len(part[number]) for part in parts]
        assert max(sizes) - min(sizes) <= 1
    if world_size == 4:
        assert [len(part[2]) for part in parts] == [1, 1, 0, 0]   # the batch of 2 at the epoch's end


def test_shard_counts_each_sample_once(monkeypatch):
    shards = []
    for rank in range(3):
        monkeypatch.setattr(distributed, 'rank', lambda rank=rank: rank)
        monkeypatch.setattr(distributed, 'world_size', lambda: 3)
        shards.append(distributed.shard(range(11)))
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_poly_learning_rate_matches_the_formula():
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, lr=0.002, weight_decay=5e-4)
    assert optimizer.param_groups[0]['momentum'] == 0.9
    assert optimizer.param_groups[0]['weight_decay'] == 5e-4
    scheduler = build_scheduler(optimizer, total_steps=7)
    for step in range(7):
        expected = 0.002 * (1 - step / 7) ** 0.9
        assert abs(optimizer.param_groups[0]['lr'] - expected) < 1e-12, step
        optimizer.step()
        scheduler.step()


def test_round_ratios_are_init_plus_i_times_delta():
    # The one-process original computes r_i = 0.2 + i * 0.2; 0.2 + 2 * 0.2 is 0.6000000000000001.
    assert round_ratios(0.2, 0.2, 5) == [0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    assert round_ratios(0.2, 0.2, 5)[2] != 0.6
    assert round_ratios(0.5, 0.1, 2) == [0.5, 0.6]


def item(value, label, count):
    return {'image': torch.full((count, 3, 1, 1), value), 'label': torch.full((count, 1, 1), label, dtype=torch.uint8)}


CPU = Runtime(torch.device('cpu'))


def test_pseudo_labeled_samples_come_first():
    pseudo = [item(1.0, 11, 2), item(2.0, 255, 1)]
    labeled = [item(3.0, 13, 2)] * 5
    batches = list(mixed_batches(pseudo, labeled, CPU, crop_size=(1, 1)))
    assert len(batches) == 2, 'one pass over the pseudo-labeled set is one epoch'
    images, labels, split, valid = batches[1]
    assert split == 1
    assert images[:, 0].flatten().tolist() == [2.0, 3.0, 3.0]
    assert labels.flatten().tolist() == [255, 13, 13]
    assert valid == 2, 'the host counts the pixels whose label is not 255 (the loss denominator)'
    assert batches[0].valid_pixels == 4


def test_an_empty_share_is_an_empty_batch_of_the_crop_size():
    images, labels, valid = device_batch(None, CPU, (5, 7))
    assert images.shape == (0, 3, 5, 7) and labels.shape == (0, 5, 7) and labels.dtype == torch.uint8
    assert valid == 0
    batches = list(mixed_batches([None], [item(3.0, 13, 2)], CPU, crop_size=(1, 1)))
    assert batches[0].split_index == 0 and batches[0].images.shape[0] == 2


def test_saved_state_restores_optimizer_scheduler_step_and_progress(tmp_path):
    torch.manual_seed(0)
    model = deeplab_v2(5, backbone='resnet14')
    optimizer = build_optimizer(model, 0.01, 5e-4)
    scheduler = build_scheduler(optimizer, 10)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    model(torch.randn(2, 3, 33, 33))['out'].mean().backward()
    optimizer.step()
    for _ in range(3):
        scheduler.step()
    save_checkpoint(tmp_path / 'last.pt', model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    step=3, best_miou=0.25, num_classes=5, settings={'state': 1},
                    extra={'train_state': {'phase': 'self_training', 'progress': {'round': 2}, 'total_steps': 10}})

    torch.manual_seed(123)
    fresh_model = deeplab_v2(5, backbone='resnet14')
    checkpoint = load_checkpoint(tmp_path / 'last.pt', num_classes=5)
    fresh_model.load_state_dict(checkpoint['model'])
    fresh_optimizer = build_optimizer(fresh_model, 0.01, 5e-4)
    fresh = TrainState(fresh_model, fresh_optimizer, build_scheduler(fresh_optimizer, 10), scaler, total_steps=10)
    restore_state(fresh, checkpoint)
    assert fresh.step == 3 and fresh.best_miou == 0.25
    assert fresh.extra['phase'] == 'self_training' and fresh.extra['progress'] == {'round': 2}
    assert 'total_steps' not in fresh.extra
    assert fresh.scheduler.last_epoch == 3
    assert fresh.optimizer.param_groups[0]['lr'] == optimizer.param_groups[0]['lr']
    name = next(name for name, p in model.named_parameters() if p.requires_grad)
    original_momentum = optimizer.state[dict(model.named_parameters())[name]]['momentum_buffer']
    restored_momentum = fresh.optimizer.state[dict(fresh_model.named_parameters())[name]]['momentum_buffer']
    assert torch.equal(original_momentum, restored_momentum)


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_non_finite_weights_or_buffers_are_found(bad):
    model = deeplab_v2(3, backbone='resnet14')
    assert weights_finite(model)
    with torch.no_grad():
        model.classifier[0].convs[1].weight[0, 0, 0, 0] = bad
    assert not weights_finite(model)
    model = deeplab_v2(3, backbone='resnet14')
    model.backbone.bn1.running_var[0] = bad
    assert not weights_finite(model)


def test_frozen_batch_norm_keeps_its_statistics():
    model = deeplab_v2(3, backbone='resnet14')
    set_train_mode(model, frozen_bn=True)
    assert model.training and not model.backbone.bn1.training
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 3, 33, 33) * 5 + 3)
    assert torch.equal(model.backbone.bn1.running_mean, before)
    set_train_mode(model)
    model(torch.randn(2, 3, 33, 33) * 5 + 3)
    assert not torch.equal(model.backbone.bn1.running_mean, before)
