"""ConfusionMatrix and scores against examples worked out by hand and a plain counting loop."""
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.metrics import ConfusionMatrix, SegmentationScores, format_table

# Three classes, twelve labeled pixels and two ignored ones.
TARGET = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 255, 255]
PREDICTION = [0, 0, 0, 1, 1, 1, 2, 0, 2, 2, 2, 1, 0, 2]
# By hand: rows are ground truth, columns predictions.
#   gt 0 -> predicted 0, 0, 0, 1   gt 1 -> 1, 1, 2, 0   gt 2 -> 2, 2, 2, 1
HAND_MATRIX = [[3, 1, 0],
               [1, 2, 1],
               [0, 1, 3]]
# TP = 3, 2, 3; FP = column sums - TP = 1, 2, 1; FN = row sums - TP = 1, 2, 1.
HAND_IOU = [3 / 5, 2 / 6, 3 / 5]
HAND_ACCURACY = 8 / 12
HAND_MIOU = (3 / 5 + 2 / 6 + 3 / 5) / 3


def hand_example(num_classes=3):
    matrix = ConfusionMatrix(num_classes)
    matrix.update(torch.tensor(TARGET), torch.tensor(PREDICTION))
    return matrix


def counted_by_loop(targets, predictions, num_classes):
    counts = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(targets, predictions):
        if 0 <= t < num_classes:
            counts[t][p] += 1
    return counts


def test_hand_example():
    matrix = hand_example()
    assert matrix.matrix.dtype == torch.int64
    assert matrix.matrix.tolist() == HAND_MATRIX
    scores = matrix.compute()
    assert isinstance(scores, SegmentationScores)
    assert scores.pixel_accuracy == pytest.approx(HAND_ACCURACY)
    assert scores.iou == pytest.approx(HAND_IOU)
    assert scores.miou == pytest.approx(HAND_MIOU)
    assert scores.miou == pytest.approx(0.511111111)
    assert scores.present_classes == [0, 1, 2]
    assert scores.absent_classes == []
    assert scores.num_pixels == 12


def test_ignored_pixels_do_not_count():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([255, 255, 1, -1, 3]), torch.tensor([0, 1, 1, 2, 2]))
    assert matrix.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert matrix.compute().pixel_accuracy == 1.0


def test_absent_class_is_nan_and_left_out_of_miou():
    scores = hand_example(num_classes=4).compute()
    assert scores.iou[:3] == pytest.approx(HAND_IOU)
    assert math.isnan(scores.iou[3])
    assert not math.isnan(scores.miou)
    assert scores.miou == pytest.approx(HAND_MIOU)
    assert scores.absent_classes == [3]
    assert scores.present_classes == [0, 1, 2]


def test_class_only_predicted_is_present_with_zero_iou():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 1]))
    scores = matrix.compute()
    # Class 0: TP 1, FN 1 -> 1/2. Class 1: TP 2 -> 1. Class 2: FP 1 only -> 0.
    assert scores.iou == pytest.approx([0.5, 1.0, 0.0])
    assert scores.present_classes == [0, 1, 2]
    assert scores.absent_classes == []
    assert scores.miou == pytest.approx(0.5)
    assert scores.pixel_accuracy == pytest.approx(3 / 4)


def test_two_updates_equal_one_update_of_the_concatenation():
    gen = torch.Generator().manual_seed(0)
    num_classes = 5
    targets = torch.randint(0, num_classes, (2, 6, 7), generator=gen)
    targets[torch.rand(2, 6, 7, generator=gen) < 0.2] = 255
    predictions = torch.randint(0, num_classes, (2, 6, 7), generator=gen)

    split = ConfusionMatrix(num_classes)
    split.update(targets[0], predictions[0])
    # Shapes may differ when the number of pixels agrees.
    split.update(targets[1], predictions[1].reshape(-1))
    whole = ConfusionMatrix(num_classes)
    whole.update(torch.cat([targets[0].reshape(-1), targets[1].reshape(-1)]),
                 torch.cat([predictions[0].reshape(-1), predictions[1].reshape(-1)]))
    assert torch.equal(split.matrix, whole.matrix)
    expected = counted_by_loop(targets.reshape(-1).tolist(), predictions.reshape(-1).tolist(),
                               num_classes)
    assert whole.matrix.tolist() == expected


def test_uint8_labels_and_reset():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor(TARGET, dtype=torch.uint8), torch.tensor(PREDICTION))
    assert matrix.matrix.tolist() == HAND_MATRIX
    matrix.reset()
    assert matrix.matrix.tolist() == [[0] * 3] * 3
    scores = matrix.compute()
    assert math.isnan(scores.pixel_accuracy) and math.isnan(scores.miou)
    assert scores.absent_classes == [0, 1, 2]


def test_merge_and_iadd_sum_matrices():
    first, second = hand_example(), ConfusionMatrix(3)
    second.update(torch.tensor([0, 1, 2]), torch.tensor([2, 2, 2]))
    doubled = [[3, 1, 1], [1, 2, 2], [0, 1, 4]]
    assert first.merge(second) is first
    assert first.matrix.tolist() == doubled
    third = hand_example()
    third += second
    assert third.matrix.tolist() == doubled
    assert second.matrix.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match='3-class'):
        ConfusionMatrix(4).merge(first)


def test_bad_inputs_are_rejected():
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match='numbers of pixels'):
        matrix.update(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match='integer'):
        matrix.update(torch.zeros(4, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match='predictions must lie'):
        matrix.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, 3]))
    assert matrix.matrix.sum().item() == 0
    with pytest.raises(ValueError):
        ConfusionMatrix(0)


def test_to_dict_is_json_ready():
    scores = hand_example(num_classes=4).compute()
    as_dict = scores.to_dict(['bg', 'cat', 'dog', 'bus'])
    text = json.dumps(as_dict, allow_nan=False)
    back = json.loads(text)
    assert back['iou']['bus'] is None
    assert back['iou']['cat'] == pytest.approx(2 / 6)
    assert back['miou'] == pytest.approx(HAND_MIOU)
    assert back['pixel_accuracy'] == pytest.approx(HAND_ACCURACY)
    assert back['absent_classes'] == ['bus']
    unnamed = scores.to_dict()
    assert unnamed['iou']['3'] is None and unnamed['absent_classes'] == [3]
    json.dumps(unnamed, allow_nan=False)
    with pytest.raises(ValueError, match='class names'):
        scores.to_dict(['bg', 'cat'])


def test_format_table():
    scores = hand_example(num_classes=4).compute()
    table = format_table(scores, ['background', 'cat', 'dog', 'bus'])
    lines = table.splitlines()
    row = {line.split()[0]: line.split()[1] for line in lines
           if line.split() and line.split()[0] in ('background', 'cat', 'dog', 'bus')}
    assert row == {'background': '60.00', 'cat': '33.33', 'dog': '60.00', 'bus': 'absent'}
    assert 'pixel accuracy: 66.67%' in table
    assert 'mIoU: 51.11%' in table
    assert any('absent' in line and 'bus' in line and line.split()[0] != 'bus' for line in lines)


def test_all_reduce_is_a_no_op_without_process_group():
    assert not dist.is_initialized()
    matrix = hand_example()
    matrix.all_reduce()
    assert matrix.matrix.tolist() == HAND_MATRIX


def _reduce_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size)
    try:
        matrix = ConfusionMatrix(3)
        # Each process sees half of the hand example.
        half = len(TARGET) // 2
        part = slice(0, half) if rank == 0 else slice(half, None)
        matrix.update(torch.tensor(TARGET[part]), torch.tensor(PREDICTION[part]))
        matrix.all_reduce()
        torch.save(matrix.matrix, f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_processes(tmp_path):
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert torch.load(tmp_path / f'rank{rank}.pt').tolist() == HAND_MATRIX
