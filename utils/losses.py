"""The training loss of DST-CBC: cross entropy where pseudo-labeled pixels weigh their confidence.

Dynamic self-training (spec section 5) trusts a pseudo label as much as the current network
believes it: each pseudo-labeled pixel's cross entropy is scaled by p^gamma, with p the softmax
probability of that label. The weight is detached so that the network cannot lower the loss by
making itself less sure of its own pseudo labels; only the cross entropy term carries a gradient.
"""
import contextlib
import math
import operator

import torch
from torch import nn


class DynamicLoss(nn.Module):
    """Per-pixel cross entropy with confidence-weighted pseudo labels, averaged over valid pixels.

    The denominator is the count of every non-ignored pixel in the batch (pseudo and labeled
    alike), not the sum of the weights: down-weighted pixels then really contribute less instead
    of being renormalised back up, which is what the original method does.
    """

    def __init__(self, gamma: float, ignore_index: int = 255):
        super().__init__()
        gamma = float(gamma)
        if not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f'gamma must be a finite number >= 0, got {gamma}')
        self.gamma = gamma
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return f'gamma={self.gamma}, ignore_index={self.ignore_index}'

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                split_index: int | None = None) -> torch.Tensor:
        """Return the scalar float32 loss; samples [0, split_index) of the batch are pseudo-labeled."""
        total, count = self.sum_and_count(logits, targets, split_index)
        # With no valid pixel the sum is an exact 0 built from the logits, so dividing by 1
        # gives the zero loss with a (zero) gradient path and no host sync to test the count.
        return total / count.clamp(min=1)

    def sum_and_count(self, logits: torch.Tensor, targets: torch.Tensor,
                      split_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted sum of the per-pixel losses and the number of non-ignored pixels.

        Apart so that several processes can divide the sum over their shares of a batch by the
        count of the whole batch. Computed in float32 with autocast switched off, because under
        mixed precision a half precision log-softmax loses the small probabilities that gamma = 9
        raises to a power.
        """
        split_index = self._check_inputs(logits, targets, split_index)
        with autocast_off(logits.device):
            log_probs = torch.log_softmax(logits.float(), dim=1)
            valid = targets != self.ignore_index
            # Ignored pixels get a harmless class 0 so gather stays in range; masked out below.
            safe_targets = torch.where(valid, targets.long(), torch.zeros_like(targets, dtype=torch.long))
            label_log_prob = log_probs.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
            per_pixel = -label_log_prob

            if split_index and self.gamma != 0:
                confidence = label_log_prob.detach().exp()
                is_pseudo = (torch.arange(logits.shape[0], device=logits.device) < split_index)
                weight = torch.where(is_pseudo.view(-1, 1, 1), confidence.pow(self.gamma),
                                     torch.ones_like(confidence))
                per_pixel = per_pixel * weight

            # where(), not a multiply by the mask: an inf at an ignored pixel would give NaN.
            total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
            return total, valid.sum()

    @staticmethod
    def _check_inputs(logits: torch.Tensor, targets: torch.Tensor, split_index: int | None) -> int:
        """Fail with a readable message instead of a broadcasting error or a CUDA device assert.

        Returns split_index as a plain int (0 for None) so numpy or tensor scalars also work.
        """
        if logits.dim() != 4:
            raise ValueError(f'logits must be [N, C, H, W], got shape {tuple(logits.shape)}')
        if not logits.is_floating_point():
            raise ValueError(f'logits must be floating point, got {logits.dtype}')
        if targets.dim() != 3:
            raise ValueError(f'targets must be [N, H, W], got shape {tuple(targets.shape)}')
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f'targets must hold integer class indices, got {targets.dtype}')
        n, _, h, w = logits.shape
        if tuple(targets.shape) != (n, h, w):
            raise ValueError(
                f'logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on '
                f'N, H, W: expected targets of shape {(n, h, w)}')
        if targets.device != logits.device:
            raise ValueError(f'logits are on {logits.device} but targets on {targets.device}')
        if split_index is None:
            return 0
        if isinstance(split_index, bool):
            raise ValueError(f'split_index must be an int or None, got {split_index!r}')
        try:
            index = operator.index(split_index)
        except TypeError:
            raise ValueError(f'split_index must be an int or None, got {split_index!r}') from None
        if not 0 <= index <= n:
            raise ValueError(f'split_index must lie in [0, {n}] for a batch of {n}, got {index}')
        return index


def autocast_off(device):
    """No autocast inside the loss; devices without autocast (meta, in tests) need no switch."""
    if device.type in ('cuda', 'cpu'):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
