"""Training pieces: resumable batch order, poly lr, round ratios, batch composition, saved state."""
import torch

from models import deeplab_v2
from utils.checkpoints import load_checkpoint
from utils.self_training import pseudo_and_labeled_batches, round_ratios
from utils.training import (EpochBatchSampler, TrainState, build_optimizer, build_scheduler,
                            restore_state, save_state)


def test_every_epoch_is_a_permutation_with_a_short_last_batch():
    sampler = EpochBatchSampler(size=10, batch_size=4, seed=3, num_batches=9)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [sum(batches[i:i + 3], []) for i in (0, 3, 6)]
    for order in epochs:
        assert sorted(order) == list(range(10))
    assert epochs[0] != epochs[1], 'each epoch reshuffles'


def test_starting_mid_stream_continues_the_same_batches():
    full = list(EpochBatchSampler(size=13, batch_size=3, seed=5, num_batches=20))
    for start in (0, 1, 4, 5, 11):
        tail = list(EpochBatchSampler(size=13, batch_size=3, seed=5, start_batch=start, num_batches=20))
        assert tail == full[start:]
    endless = iter(EpochBatchSampler(size=13, batch_size=3, seed=5))
    assert [next(endless) for _ in range(20)] == full


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


def test_pseudo_labeled_samples_come_first():
    pseudo = [(torch.full((2, 1), 1.0), torch.full((2, 1), 11)), (torch.full((1, 1), 2.0), torch.full((1, 1), 12))]
    labeled = [(torch.full((2, 1), 3.0), torch.full((2, 1), 13))] * 5
    batches = list(pseudo_and_labeled_batches(pseudo, labeled))
    assert len(batches) == 2, 'one pass over the pseudo-labeled set is one epoch'
    images, labels, split = batches[1]
    assert split == 1
    assert images.flatten().tolist() == [2.0, 3.0, 3.0]
    assert labels.flatten().tolist() == [12, 13, 13]


def test_saved_state_restores_optimizer_scheduler_step_and_rng(tmp_path):
    torch.manual_seed(0)
    model = deeplab_v2(5, backbone='resnet14')
    optimizer = build_optimizer(model, 0.01, 5e-4)
    scheduler = build_scheduler(optimizer, 10)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    state = TrainState(model, optimizer, scheduler, scaler, total_steps=10, step=3, best_miou=0.25,
                       extra={'phase': 'self_training', 'round': 2})
    model(torch.randn(2, 3, 33, 33))['out'].mean().backward()
    optimizer.step()
    for _ in range(3):
        scheduler.step()
    save_state(tmp_path / 'last.pt', state, num_classes=5, settings={'state': 1})
    expected_draw = torch.rand(3)

    torch.manual_seed(123)
    fresh_model = deeplab_v2(5, backbone='resnet14')
    checkpoint = load_checkpoint(tmp_path / 'last.pt', num_classes=5)
    fresh_model.load_state_dict(checkpoint['model'])
    fresh_optimizer = build_optimizer(fresh_model, 0.01, 5e-4)
    fresh = TrainState(fresh_model, fresh_optimizer, build_scheduler(fresh_optimizer, 10), scaler, total_steps=10)
    restore_state(fresh, checkpoint)
    assert fresh.step == 3 and fresh.best_miou == 0.25
    assert fresh.extra['phase'] == 'self_training' and fresh.extra['round'] == 2
    assert fresh.scheduler.last_epoch == 3
    assert fresh.optimizer.param_groups[0]['lr'] == optimizer.param_groups[0]['lr']
    name = next(iter(dict(model.named_parameters())))
    original_momentum = optimizer.state[dict(model.named_parameters())[name]]['momentum_buffer']
    restored_momentum = fresh.optimizer.state[dict(fresh_model.named_parameters())[name]]['momentum_buffer']
    assert torch.equal(original_momentum, restored_momentum)
    assert torch.equal(torch.rand(3), expected_draw), 'the RNG continues where the run stopped'
