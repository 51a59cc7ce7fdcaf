"""Turn AdvSemiSeg's COCO-pretrained DeepLabV2 into a checkpoint for `--coco --continue-from`.

The paper's numbers start from that file, whose keys follow AdvSemiSeg's own ResNet
(`conv1.weight`, ..., `layer5.conv2d_list.<i>.*`). Renaming them into our layout (spec section 4)
lets the rest of the program load it like any of its own checkpoints. Tensors whose shapes
differ (Cityscapes' 19-class head against COCO-VOC's 21) keep their random initialisation,
seeded so that two conversions give the same file.

Usage: python convert_coco.py SOURCE --dataset {voc,city,FILE} --output PATH

The class count comes from the dataset's description (a dataset of one's own too: its head
keeps a seeded random initialisation where the count is not COCO-VOC's 21).
"""
import sys
from pathlib import Path

import torch

from models import deeplab_v2
from utils.checkpoints import load_torch_file, save_checkpoint
from utils.dataset_description import get_dataset_info
from utils.errors import InputError
from utils.flags import OneLineParser

_SOURCE_HEAD = 'layer5.conv2d_list.'
_TARGET_HEAD = 'classifier.0.convs.'


def target_key(source_key: str) -> str:
    if source_key.startswith(_SOURCE_HEAD):
        return _TARGET_HEAD + source_key[len(_SOURCE_HEAD):]
    return 'backbone.' + source_key


def _read_source(path: Path) -> dict:
    """The source state dict; a file of any other kind is refused saying what it is, by the
    classification `load_checkpoint` uses too (text, empty, a whole pickled network, ...)."""
    if path.is_dir():
        raise InputError(f'{path}: a folder, not a file: expected resnet101COCO-41f33a49.pth')
    if not path.exists():
        raise InputError(f'{path}: no such file')
    if not path.is_file():
        raise InputError(f'{path}: not a regular file: expected resnet101COCO-41f33a49.pth')
    source = load_torch_file(path)
    if not isinstance(source, dict) or not source \
            or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise InputError(f'{path}: not a plain state dict of tensors, '
                         f'expected resnet101COCO-41f33a49.pth')
    return source


def convert(source: dict, num_classes: int) -> tuple[torch.nn.Module, list[str], list[str]]:
    """Return the filled model and the source keys that were and were not copied."""
    # Seed 0 makes the head tensors that do not fit reproducible; the fork leaves the caller's
    # random stream as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = deeplab_v2(num_classes, backbone='resnet101')
    state = model.state_dict()
    matched, unmatched = [], []
    for key, tensor in source.items():
        target = target_key(key)
        if target in state and state[target].shape == tensor.shape:
            state[target] = tensor.to(state[target].dtype)
            matched.append(key)
        else:
            unmatched.append(key)
    model.load_state_dict(state)
    return model, matched, unmatched


def main(argv=None) -> int:
    parser = OneLineParser(prog='convert_coco.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('source', type=Path, help='resnet101COCO-41f33a49.pth of AdvSemiSeg')
    parser.add_argument('--dataset', required=True, metavar='{voc,city,FILE}',
                        help='the dataset to fine-tune on: its class count sizes the head')
    parser.add_argument('--output', type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        source = _read_source(args.source)
        info = get_dataset_info(args.dataset)
        num_classes = info.num_classes
        model, matched, unmatched = convert(source, num_classes)
        if not matched:
            raise InputError(f'{args.source}: no tensor matches a DeepLabV2-ResNet101 key, '
                             f'expected resnet101COCO-41f33a49.pth')
        save_checkpoint(args.output, model, num_classes=num_classes,
                        settings={'converted_from': args.source.name, 'dataset': info.name})
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'{args.output.name}: {len(matched)} tensors matched, {len(unmatched)} not matched')
    if unmatched:
        shown = ', '.join(unmatched[:4]) + (', ...' if len(unmatched) > 4 else '')
        print(f'  kept at their seeded random init (shape or name differs): {shown}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
