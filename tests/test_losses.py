"""DynamicLoss against a plain per-pixel Python loop: value and gradient, weight detached."""
import math

import pytest
import torch
import torch.nn.functional as F

from utils.losses import DynamicLoss

IGNORE = 255
GAMMAS = [0.0, 1.0, 2.5, 9.0]


def make_batch(seed, n, c=5, h=3, w=4, ignored_share=0.25, dtype=torch.float32):
    """Spread-out logits (so p covers (0, 1)) and labels with some 255 pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, c, h, w, generator=gen)).to(dtype)
    targets = torch.randint(0, c, (n, h, w), generator=gen)
    ignore = torch.rand(n, h, w, generator=gen) < ignored_share
    targets[ignore] = IGNORE
    return logits, targets


def reference(logits, targets, gamma, split_index):
    """Loss and its gradient, one pixel at a time with math on Python floats (float64).

    The gradient of w * ce with w held constant is w * (softmax_c - [c == label]) / count.
    """
    x = logits.detach().to(torch.float64)
    n, c, h, w = x.shape
    split = split_index or 0
    total, count = 0.0, 0
    grad = torch.zeros(n, c, h, w, dtype=torch.float64)
    for i in range(n):
        for y in range(h):
            for z in range(w):
                label = int(targets[i, y, z])
                if label == IGNORE:
                    continue
                values = [float(x[i, k, y, z]) for k in range(c)]
                top = max(values)
                log_sum = top + math.log(sum(math.exp(v - top) for v in values))
                log_p = values[label] - log_sum
                p = math.exp(log_p)
                weight = p ** gamma if i < split else 1.0
                total += weight * (-log_p)
                count += 1
                for k in range(c):
                    softmax_k = math.exp(values[k] - log_sum)
                    grad[i, k, y, z] = weight * (softmax_k - (1.0 if k == label else 0.0))
    if count == 0:
        return 0.0, grad
    return total / count, grad / count


def loss_and_grad(loss_fn, logits, targets, split_index):
    leaf = logits.clone().requires_grad_(True)
    loss = loss_fn(leaf, targets, split_index=split_index)
    loss.backward()
    return loss, leaf.grad


@pytest.mark.parametrize('gamma', GAMMAS)
@pytest.mark.parametrize('split_kind', ['none', 'zero', 'one', 'two', 'all'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_value_and_gradient_match_pixel_loop(gamma, split_kind, seed):
    n = 3 + seed % 2
    logits, targets = make_batch(seed, n)
    split_index = {'none': None, 'zero': 0, 'one': 1, 'two': 2, 'all': n}[split_kind]
    loss, grad = loss_and_grad(DynamicLoss(gamma), logits, targets, split_index)
    expected_loss, expected_grad = reference(logits, targets, gamma, split_index)

    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-7)
    # Ignored pixels must not receive any gradient.
    ignored = (targets == IGNORE).unsqueeze(1).expand_as(grad)
    assert ignored.any() and torch.all(grad[ignored] == 0)


def test_pseudo_weighting_actually_changes_the_loss():
    """Guards against a weight that is silently never applied."""
    logits, targets = make_batch(5, 4)
    plain = DynamicLoss(0.0)(logits, targets, split_index=4).item()
    weighted = DynamicLoss(2.5)(logits, targets, split_index=4).item()
    # Every weight is p^2.5 < 1, so the weighted loss is strictly smaller.
    assert weighted < plain - 1e-3


def test_small_case_by_hand():
    # Sample 0 (pseudo): one pixel with logits (0, log 3) and label 1, so p = 3/4; one ignored.
    # Sample 1 (labeled): one pixel with logits (0, 0) and label 0, so ce = log 2; one ignored.
    logits = torch.tensor([[[[0.0, 5.0]], [[math.log(3.0), -5.0]]],
                           [[[0.0, 1.0]], [[0.0, 2.0]]]])
    targets = torch.tensor([[[1, IGNORE]], [[0, IGNORE]]])
    loss = DynamicLoss(2.0)(logits, targets, split_index=1)
    expected = (0.75 ** 2 * -math.log(0.75) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Without the split both pixels weigh 1.
    plain = DynamicLoss(2.0)(logits, targets)
    assert plain.item() == pytest.approx((-math.log(0.75) + math.log(2.0)) / 2, rel=1e-6)


@pytest.mark.parametrize('seed', [0, 1])
def test_gamma_zero_and_no_split_equal_torch_cross_entropy(seed):
    logits, targets = make_batch(seed, 3)
    expected = F.cross_entropy(logits.double(), targets, ignore_index=IGNORE).item()
    assert DynamicLoss(0.0)(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert DynamicLoss(0.0)(logits, targets, split_index=2).item() == pytest.approx(expected,
                                                                                    rel=1e-6)
    assert DynamicLoss(9.0)(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert DynamicLoss(9.0)(logits, targets, split_index=0).item() == pytest.approx(expected,
                                                                                    rel=1e-6)


def test_weight_is_detached():
    """The gradient is that of w * ce with w constant, not of p^gamma * ce through p."""
    gamma = 2.5
    logits, targets = make_batch(3, 3)
    _, grad = loss_and_grad(DynamicLoss(gamma), logits, targets, split_index=3)

    # The same loss value with p left attached to the graph.
    leaf = logits.clone().double().requires_grad_(True)
    valid = targets != IGNORE
    log_p = torch.log_softmax(leaf, 1).gather(1, targets.clamp(max=4).unsqueeze(1)).squeeze(1)
    attached = (log_p.exp() ** gamma * -log_p)[valid].sum() / valid.sum()
    attached.backward()

    # Independently: d(p^g * -log p)/dx_k = p^g (g * ce - 1)(delta_k - softmax_k) / count.
    x = logits.double()
    softmax = torch.softmax(x, 1)
    count = int(valid.sum())
    by_hand = torch.zeros_like(x)
    for i, y, z in valid.nonzero().tolist():
        label = int(targets[i, y, z])
        p = float(softmax[i, label, y, z])
        ce = -math.log(p)
        for k in range(x.shape[1]):
            delta = 1.0 if k == label else 0.0
            softmax_k = float(softmax[i, k, y, z])
            by_hand[i, k, y, z] = p ** gamma * (gamma * ce - 1) * (delta - softmax_k)
    torch.testing.assert_close(leaf.grad, by_hand / count)

    # The loss values agree but the gradients do not.
    assert DynamicLoss(gamma)(logits, targets, split_index=3).item() == pytest.approx(
        attached.item(), rel=1e-5)
    assert (grad.double() - leaf.grad).abs().max().item() > 1e-3
    _, expected_grad = reference(logits, targets, gamma, 3)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('split_index', [None, 2])
def test_all_ignored_batch_gives_zero_with_finite_gradient(split_index):
    logits, _ = make_batch(4, 3)
    targets = torch.full((3, 3, 4), IGNORE)
    leaf = logits.clone().requires_grad_(True)
    loss = DynamicLoss(9.0)(leaf, targets, split_index=split_index)
    assert loss.requires_grad
    assert loss.item() == 0.0
    loss.backward()
    assert leaf.grad is not None
    assert torch.isfinite(leaf.grad).all()
    assert torch.all(leaf.grad == 0)


def test_bfloat16_logits_are_computed_in_float32():
    logits, targets = make_batch(6, 4, dtype=torch.bfloat16)
    loss, grad = loss_and_grad(DynamicLoss(2.5), logits, targets, 2)
    # The reference sees the exact bfloat16 values, so only float32 rounding separates the two.
    expected_loss, expected_grad = reference(logits, targets, 2.5, 2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    assert grad.dtype == torch.bfloat16
    # The gradient is rounded to bfloat16 (8 significant bits) on its way back.
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-2, atol=1e-4)


def test_under_cpu_autocast():
    logits, targets = make_batch(7, 3)
    expected_loss, _ = reference(logits.to(torch.bfloat16), targets, 9.0, 1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        half = logits.to(torch.bfloat16).requires_grad_(True)
        loss = DynamicLoss(9.0)(half, targets, split_index=1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    loss.backward()
    assert torch.isfinite(half.grad.float()).all()


def test_float16_logits():
    logits, targets = make_batch(8, 3, dtype=torch.float16)
    expected_loss, _ = reference(logits, targets, 1.0, 3)
    assert DynamicLoss(1.0)(logits, targets, split_index=3).item() == pytest.approx(
        expected_loss, rel=1e-5)


def test_mismatched_shapes_are_rejected():
    logits, targets = make_batch(0, 3)
    with pytest.raises(ValueError, match='disagree on N, H, W'):
        DynamicLoss(1.0)(logits, targets[:2])
    with pytest.raises(ValueError, match='disagree on N, H, W'):
        DynamicLoss(1.0)(logits, targets[:, :, :3])
    with pytest.raises(ValueError, match=r'\[N, H, W\]'):
        DynamicLoss(1.0)(logits, targets[0])
    with pytest.raises(ValueError, match=r'\[N, C, H, W\]'):
        DynamicLoss(1.0)(logits[0], targets)


def test_bad_split_gamma_and_target_dtype_are_rejected():
    logits, targets = make_batch(0, 3)
    with pytest.raises(ValueError, match='split_index'):
        DynamicLoss(1.0)(logits, targets, split_index=4)
    with pytest.raises(ValueError, match='split_index'):
        DynamicLoss(1.0)(logits, targets, split_index=-1)
    with pytest.raises(ValueError, match='integer'):
        DynamicLoss(1.0)(logits, targets.float())
    with pytest.raises(ValueError, match='gamma'):
        DynamicLoss(-1.0)
    # A 0-dim integer tensor is an acceptable split index.
    a = DynamicLoss(2.0)(logits, targets, split_index=torch.tensor(2)).item()
    b = DynamicLoss(2.0)(logits, targets, split_index=2).item()
    assert a == b


def test_custom_ignore_index():
    logits, targets = make_batch(9, 3)
    relabeled = targets.clone()
    relabeled[targets == IGNORE] = -1
    expected = DynamicLoss(2.5)(logits, targets, split_index=1).item()
    assert DynamicLoss(2.5, ignore_index=-1)(logits, relabeled, split_index=1).item() == expected
