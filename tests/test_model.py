"""DeepLabV2: output size and format, checkpoint key layout, the head's two-branch sum, AMP."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from models import BACKBONES, deeplab_v2
from utils.errors import InputError


def tiny(num_classes=5, **kwargs):
    torch.manual_seed(0)
    return deeplab_v2(num_classes, backbone='resnet14', **kwargs).eval()


def test_backbone_names():
    assert set(BACKBONES) == {'resnet101', 'resnet50', 'resnet14'}


def test_output_is_dict_at_one_eighth():
    # Worked out by hand, floor((n + 2p - k) / s) + 1 at each strided step:
    # conv1 7x7/2 pad 3:  65 -> 33,  97 -> 49
    # maxpool 3x3/2 pad 1: 33 -> 17,  49 -> 25
    # layer2 3x3/2 pad 1: 17 -> 9,   25 -> 13; layer3, layer4 and the head keep the size.
    with torch.no_grad():
        result = tiny(7)(torch.randn(2, 3, 65, 97))
    assert isinstance(result, dict) and set(result) == {'out'}
    assert result['out'].shape == (2, 7, 9, 13)


def test_resnet101_state_dict_keys_match_torchvision():
    model = deeplab_v2(21)
    reference = torchvision.models.resnet101().state_dict()
    expected = {'backbone.' + k for k in reference if not k.startswith('fc.')}
    expected |= {f'classifier.0.convs.{i}.{p}' for i in range(4) for p in ('weight', 'bias')}
    state = model.state_dict()
    assert set(state) == expected
    assert 'backbone.layer4.2.bn3.running_var' in state
    for i in range(4):
        assert state[f'classifier.0.convs.{i}.weight'].shape == (21, 2048, 3, 3)
        assert state[f'classifier.0.convs.{i}.bias'].shape == (21,)
    # Shapes of the backbone are torchvision's, so its ImageNet files fit unchanged.
    for k, v in reference.items():
        if not k.startswith('fc.'):
            assert state['backbone.' + k].shape == v.shape, k


def test_resnet101_dilations_give_output_stride_8():
    model = deeplab_v2(3)
    layer4 = model.backbone.layer4
    assert layer4[0].conv2.stride == (1, 1) and layer4[0].downsample[0].stride == (1, 1)
    assert layer4[1].conv2.dilation == (4, 4)
    assert model.backbone.layer3[1].conv2.dilation == (2, 2)
    assert [c.dilation for c in model.classifier[0].convs] == [(d, d) for d in (6, 12, 18, 24)]


def test_head_init_is_normal_001_and_zero_bias():
    torch.manual_seed(0)
    head = deeplab_v2(21, backbone='resnet14').classifier[0]
    weights = torch.cat([c.weight.flatten() for c in head.convs])
    assert all(torch.count_nonzero(c.bias) == 0 for c in head.convs)
    # 4 x 21 x 2048 x 9 samples: the std is known to well within 2%.
    assert abs(weights.std().item() - 0.01) < 2e-4
    assert abs(weights.mean().item()) < 1e-4


def _branch(features, conv, d):
    return F.conv2d(features, conv.weight, conv.bias, padding=d, dilation=d)


@pytest.mark.parametrize('branches', [2, 4])
def test_head_sums_the_first_branches(branches):
    model = tiny(3, head_branches=branches)
    convs = model.classifier[0].convs
    with torch.no_grad():
        for conv in convs:  # biases of 0 would hide a missing bias term
            conv.bias.normal_()
        x = torch.randn(1, 3, 40, 40)
        features = model.backbone(x)['out']
        expected = sum(_branch(features, convs[i], d)
                       for i, d in enumerate((6, 12, 18, 24)[:branches]))
        out = model(x)['out']
    assert features.shape[1] == 2048
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_default_head_ignores_branches_three_and_four():
    x = torch.randn(1, 3, 33, 33)
    for branches, should_change in ((2, False), (4, True)):
        model = tiny(3, head_branches=branches)
        with torch.no_grad():
            before = model(x)['out']
            for conv in model.classifier[0].convs[2:]:
                conv.weight.normal_()
                conv.bias.fill_(1.0)
            after = model(x)['out']
        assert torch.equal(before, after) is not should_change


def test_bad_arguments():
    with pytest.raises(InputError, match='resnet18'):
        deeplab_v2(21, backbone='resnet18')
    with pytest.raises(InputError, match='head_branches'):
        deeplab_v2(21, backbone='resnet14', head_branches=3)
    with pytest.raises(InputError, match='resnet14'):
        deeplab_v2(21, backbone='resnet14', pretrained_backbone=True)
    with pytest.raises(ValueError):
        deeplab_v2(0, backbone='resnet14')


def test_pretrained_download_offline_names_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    try:
        model = deeplab_v2(21, backbone='resnet50', pretrained_backbone=True)
    except InputError as error:
        message = str(error)
    else:
        assert model.backbone.conv1.weight.abs().sum() > 0
        pytest.skip('the network is reachable here: the weights downloaded')
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert '\n' not in message
    assert url in message
    assert str(tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth') in message


def test_bfloat16_autocast_trains():
    model = tiny(4).train()
    x = torch.randn(2, 3, 41, 41)
    labels = torch.randint(0, 4, (2, 41, 41))
    labels[:, :5] = 255
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = model(x)['out']
        logits = F.interpolate(logits, size=labels.shape[-2:], mode='bilinear',
                               align_corners=True)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
    loss.backward()
    assert math.isfinite(loss.item())
    # Near-uniform initial logits over 4 classes: the loss is about ln 4.
    assert abs(loss.item() - math.log(4)) < 0.5
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # Branches 3 and 4 do not take part in the default sum, so they get no gradient.
    assert model.classifier[0].convs[2].weight.grad is None
    assert model.classifier[0].convs[1].weight.grad is not None


def test_pretrained_corrupt_cached_file_says_delete_it(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    cached = tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth'
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b'cut off by a failed copy')
    with pytest.raises(InputError) as error:
        deeplab_v2(21, backbone='resnet50', pretrained_backbone=True)
    message = str(error.value)
    assert '\n' not in message and str(cached) in message and 'delete' in message
