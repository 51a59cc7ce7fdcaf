"""DeepLabV2: a dilated ResNet (output stride 8) and a head of four atrous 3x3 convolutions.

The module layout is dictated by checkpoint compatibility (spec section 4): the original program
stored `backbone.<torchvision resnet name>` and `classifier.0.convs.<i>.{weight,bias}`, so the
backbone is torchvision's own ResNet behind `IntermediateLayerGetter` and the head sits at index 0
of a Sequential. Logits leave at 1/8 of the input size: the caller upsamples them to whatever size
its labels have, which differs between training crops, padded evaluation and pseudo-labeling.
"""
import os
import types
import urllib.parse
from typing import Callable, NamedTuple

import torch
from torch import nn
from torchvision.models import ResNet101_Weights, ResNet50_Weights, resnet50, resnet101
from torchvision.models._api import WeightsEnum
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet

from utils.errors import InputError

# Output stride 8: layer3 and layer4 trade their stride for dilation 2 and 4.
_DILATE_LAYER3_AND_LAYER4 = [False, True, True]
_HEAD_DILATIONS = (6, 12, 18, 24)
_BACKBONE_CHANNELS = 2048


def _resnet14(weights: None = None, **kwargs) -> ResNet:
    """One bottleneck per stage: the same key layout and 2048 channels at a fraction of the cost.

    Only for CPU demos and tests, where ResNet-101's 42 M parameters are too slow to train.
    """
    return ResNet(Bottleneck, [1, 1, 1, 1], **kwargs)


class BackboneSpec(NamedTuple):
    build: Callable[..., ResNet]
    imagenet_weights: WeightsEnum | None


# Read-only so that no caller can register a backbone behind another's back.
BACKBONES = types.MappingProxyType({
    'resnet101': BackboneSpec(resnet101, ResNet101_Weights.IMAGENET1K_V1),
    'resnet50': BackboneSpec(resnet50, ResNet50_Weights.IMAGENET1K_V1),
    'resnet14': BackboneSpec(_resnet14, None),
})


class AtrousSumHead(nn.Module):
    """DeepLabV2's ASPP-less head: parallel dilated 3x3 convolutions whose logits are added.

    `branches` says how many of the four convolutions take part. All four always exist, so
    that checkpoints have the same keys whichever sum they were trained with.
    """

    def __init__(self, in_channels: int, num_classes: int, branches: int = 2,
                 dilations: tuple[int, ...] = _HEAD_DILATIONS):
        super().__init__()
        self.branches = branches
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in dilations)
        for conv in self.convs:
            # DeepLabV2's (Caffe) initialisation; PyTorch's default would start with large logits.
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)
        for conv in self.convs[branches:]:
            # Kept for the checkpoint layout but never used: frozen, so that optimizers and
            # DistributedDataParallel see only the parameters that get gradients.
            conv.requires_grad_(False)

    def extra_repr(self) -> str:
        return f'branches={self.branches}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:self.branches]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {'out': self.classifier(self.backbone(x)['out'])}


def _weights_file(weights: WeightsEnum) -> str:
    """Where torch.hub looks for the weights, so an offline user knows where to put them."""
    name = os.path.basename(urllib.parse.urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), 'checkpoints', name)


def _build_resnet(backbone: str, pretrained: bool) -> ResNet:
    spec = BACKBONES[backbone]
    if not pretrained:
        return spec.build(weights=None, replace_stride_with_dilation=_DILATE_LAYER3_AND_LAYER4)
    if spec.imagenet_weights is None:
        raise InputError(f'backbone {backbone!r} has no ImageNet weights: '
                         f'use it without pretraining, or choose resnet101 or resnet50')
    weights = spec.imagenet_weights
    target = _weights_file(weights)
    try:
        return spec.build(weights=weights, replace_stride_with_dilation=_DILATE_LAYER3_AND_LAYER4)
    except OSError as error:  # URLError, HTTPError, timeouts, disk full: all OSError
        reason = ' '.join(str(error).split())
        raise InputError(f'cannot download the ImageNet weights of {backbone} ({reason}): '
                         f'fetch {weights.url} and put it at {target}') from error
    except Exception as error:
        if not os.path.exists(target):
            raise
        # A hash mismatch or a cut-off file from an earlier copy by hand.
        reason = ' '.join(str(error).split())[:200]
        raise InputError(f'{target}: unreadable ImageNet weights of {backbone} ({reason}): '
                         f'delete it and fetch {weights.url} again') from error


def deeplab_v2(num_classes: int, backbone: str = 'resnet101', head_branches: int = 2,
               pretrained_backbone: bool = False) -> DeepLabV2:
    """Build DeepLabV2; `forward(x)` returns `{'out': logits}` at 1/8 of the input's size.

    `head_branches=2` (the default) reproduces the published numbers: the original code, which
    inherited its head from AdvSemiSeg, has a `return` inside the loop that sums the branches, so
    only the dilation-6 and dilation-12 convolutions ever counted. `head_branches=4` sums all
    four, as the DeepLabV2 paper describes.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
    if backbone not in BACKBONES:
        raise InputError(f'unknown backbone {backbone!r}: choose from {", ".join(BACKBONES)}')
    if head_branches not in (2, 4):
        raise InputError(f'head_branches must be 2 (the published setting) or 4, '
                         f'got {head_branches!r}')
    resnet = _build_resnet(backbone, pretrained_backbone)
    # Stopping at layer4 drops avgpool and fc, so their keys never reach a checkpoint.
    body = IntermediateLayerGetter(resnet, return_layers={'layer4': 'out'})
    head = nn.Sequential(AtrousSumHead(_BACKBONE_CHANNELS, num_classes, head_branches))
    return DeepLabV2(body, head)
