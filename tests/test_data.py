"""Data layer: real photographs through every transform chain (alignment), Cityscapes id mapping,
roots and lists, and one-line errors for bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

import data_processing as dp
from helpers import build_city_tree, build_voc14_tree, write_list
from utils import transforms as T
from utils.errors import InputError


@pytest.fixture(scope='module')
def voc14_root(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('voc14')
    build_voc14_tree(shared_dir, root)
    return root


def coordinate_image(height, width):
    """Channels y+1 and x+1 (0 is left for padding), third channel constant."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing='ij')
    return torch.stack([ys + 1, xs + 1, torch.full_like(ys, 7.0)])


def assert_aligned(coords, out_label, source_label):
    """Every output label pixel must equal the source label at the place its image pixel came from."""
    height, width = source_label.shape
    padded = coords[0] < 0.5
    assert bool((out_label[padded] == 255).all()), 'padding must be labeled 255'
    assert bool((coords[:, padded].abs() < 1e-3).all()), 'padding must be image value 0'
    inside = ~padded
    source_y, source_x = coords[0][inside] - 1, coords[1][inside] - 1
    matches = torch.zeros_like(source_y, dtype=torch.bool)
    # The label takes the nearest source pixel; on an exact tie either neighbour is allowed.
    for dy in (-1e-3, 1e-3):
        for dx in (-1e-3, 1e-3):
            sy = torch.floor(source_y + 0.5 + dy).long().clamp(0, height - 1)
            sx = torch.floor(source_x + 0.5 + dx).long().clamp(0, width - 1)
            matches |= out_label[inside] == source_label[sy, sx]
    assert int(inside.sum()) > 0
    assert bool(matches.all()), f'{int((~matches).sum())} label pixels misaligned'


CHAINS = [
    ('voc-train-imagenet', dp.VOC, 'train', False),
    ('voc-train-coco', dp.VOC, 'train', True),
    ('voc-eval', dp.VOC, 'eval', False),
    ('voc-no-aug', dp.VOC, 'no_aug', True),
    ('city-train', dp.CITYSCAPES, 'train', False),
    ('city-eval', dp.CITYSCAPES, 'eval', True),
]


@pytest.mark.parametrize('title,info,kind,coco', CHAINS, ids=[c[0] for c in CHAINS])
def test_real_photographs_stay_aligned_through_every_chain(voc14_root, title, info, kind, coco):
    dataset = dp.build_dataset(dp.VOC, voc14_root, 'train', 'gt', transforms=None)
    chain = dp.build_transforms(info, kind, coco=coco,
                                crop_size=(161, 201) if info is dp.VOC else None)
    normalize = chain.transforms[-1]
    assert isinstance(normalize, T.Normalize)
    base_resize = None
    if kind == 'train' and info.base_size:
        # Two nearest resamplings in a row round twice; check the chain after the base resize
        # against the base-resized label (the base resize alone is checked by 'city-eval').
        base_resize, chain = chain.transforms[0], T.Compose(chain.transforms[1:])
        assert isinstance(base_resize, T.Resize)
    seen_padding = seen_flip = False
    for index in range(4):
        image, label = dataset.load_pair(index)
        if base_resize is not None:
            image, label = base_resize(image, label)
        for seed in range(3):
            torch.manual_seed(seed * 100 + index)
            out_image, out_label = chain(image, label)
            torch.manual_seed(seed * 100 + index)
            out_coords, out_label_again = chain(coordinate_image(*image.shape[-2:]), label)
            # Same random draws, same geometry: the real image's label is the coordinates' label.
            assert torch.equal(out_label, out_label_again)
            assert out_image.shape[-2:] == out_label.shape
            coords = normalize.invert(out_coords)
            assert_aligned(coords, out_label, label)
            seen_padding |= bool((coords[0] < 0.5).any())
            seen_flip |= bool((coords[1, :, 1:] < coords[1, :, :-1] - 1e-3).any())
            assert torch.isfinite(out_image).all()
    if kind == 'train' and info is dp.VOC:
        assert seen_padding and seen_flip, 'the random chain should have padded and flipped at least once'
    if kind == 'eval' and info is dp.VOC:
        assert out_image.shape[-2:] == (505, 505)


def test_train_chain_sizes_and_label_values(voc14_root):
    chain = dp.build_transforms(dp.VOC, 'train')
    dataset = dp.build_dataset(dp.VOC, voc14_root, 'train', 'gt', transforms=chain)
    item = dataset[(0, 123)]
    image, label = item['image'], item['label']
    assert image.shape == (3, 321, 321) and image.dtype == torch.float32 and image.is_contiguous()
    assert label.shape == (321, 321) and label.dtype == torch.uint8
    values = set(label.unique().tolist())
    assert values <= set(range(21)) | {255}
    again = dataset[(0, 123)]
    assert torch.equal(again['image'], image) and torch.equal(again['label'], label), \
        'a sample seed fixes the augmentation'
    other = dataset[(0, 124)]
    assert not torch.equal(other['image'], image)


def test_random_scale_uses_one_factor_for_both_sides():
    transform = T.ScaleCropFlip((1, 1), 0.5, 1.5)
    for seed in range(20):
        (height, width), _, _, _ = transform.draw(200, 300, torch.Generator().manual_seed(seed))
        # int(f*200) and int(f*300) for the same f: height/200 and width/300 agree within 1/200.
        assert abs(height / 200 - width / 300) < 1 / 200 + 1e-9
        assert 100 <= height <= 300


def test_scale_crop_flip_equals_resize_then_pad_crop_flip():
    """The one-step chain against the spec's steps written out with torch.nn.functional: the full
    bilinear / nearest-exact resize to (int(f*h), int(f*w)), padding, crop, flip, with the same
    draws (labels identical, images within float rounding)."""
    import torch.nn.functional as F
    transform = T.ScaleCropFlip((40, 50))
    source = torch.rand(3, 37, 61) * 255
    label = torch.randint(0, 21, (37, 61), dtype=torch.uint8)
    flips = set()
    for seed in range(40):
        (scaled_h, scaled_w), top, left, flip = transform.draw(37, 61, torch.Generator().manual_seed(seed))
        flips.add(flip)
        image_out, label_out = transform(source, label, torch.Generator().manual_seed(seed))
        full = F.interpolate(source[None], size=(scaled_h, scaled_w), mode='bilinear', align_corners=False)[0]
        full_label = F.interpolate(label[None, None].float(), size=(scaled_h, scaled_w),
                                   mode='nearest-exact')[0, 0].to(torch.uint8)
        pad_h, pad_w = max(40 - scaled_h, 0), max(50 - scaled_w, 0)
        full = F.pad(full, (0, pad_w, 0, pad_h), value=0.0)
        full_label = F.pad(full_label, (0, pad_w, 0, pad_h), value=255)
        expected = full[:, top:top + 40, left:left + 50]
        expected_label = full_label[top:top + 40, left:left + 50]
        if flip:
            expected, expected_label = expected.flip(-1), expected_label.flip(-1)
        assert torch.equal(label_out, expected_label), seed
        assert torch.allclose(image_out, expected, atol=0.02), seed
    assert flips == {True, False}


def test_uint8_path_matches_the_float_path_on_real_photographs(voc14_root):
    """Decoded images stay uint8 and take torch's uint8 resize; the float reference path (used for
    coordinate images above) gives the same geometry: labels identical, images within rounding."""
    dataset = dp.build_dataset(dp.VOC, voc14_root, 'train', 'gt', transforms=None)
    transform = T.ScaleCropFlip((321, 321))
    for index in range(4):
        image, label = dataset.load_pair(index)
        assert image.dtype == torch.uint8 and label.dtype == torch.uint8
        for seed in range(10):
            fast_image, fast_label = transform(image, label, torch.Generator().manual_seed(seed))
            ref_image, ref_label = transform(image.float(), label, torch.Generator().manual_seed(seed))
            assert fast_image.dtype == torch.uint8
            assert torch.equal(fast_label, ref_label)
            assert (fast_image.float() - ref_image).abs().max() <= 1.01


def test_normalisation_constants():
    pixel = torch.tensor([255.0, 128.0, 0.0]).view(3, 1, 1)
    out, _ = T.Normalize(dp.IMAGENET_MEAN, dp.IMAGENET_STD)(pixel, None)
    expected = [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    assert torch.allclose(out.flatten(), torch.tensor(expected), atol=1e-5)
    out, _ = dp.build_transforms(dp.VOC, 'no_aug', coco=True, crop_size=(1, 1)).transforms[-1](pixel, None)
    # BGR order, 0..255, BGR mean subtracted, std 1.
    assert torch.allclose(out.flatten(), torch.tensor([0 - 104.008, 128 - 116.669, 255 - 122.675]))


def test_unlabeled_mode_returns_own_size(voc14_root):
    chain = dp.build_transforms(dp.VOC, 'eval')
    dataset = dp.build_dataset(dp.VOC, voc14_root, 'val', 'unlabeled', transforms=chain)
    item = dataset[1]
    assert 'label' not in item
    with Image.open(dataset.image_path(1)) as original:
        assert tuple(item['own_size'].tolist()) == (original.height, original.width)
        assert tuple(item['file_size'].tolist()) == (original.height, original.width)
    assert item['index'] == 1 and item['image'].shape == (3, 505, 505)


def test_voc_palette_known_colours():
    assert dp.VOC_COLORS[0] == (0, 0, 0)
    assert dp.VOC_COLORS[1] == (128, 0, 0)
    assert dp.VOC_COLORS[15] == (192, 128, 128)   # person
    assert dp.VOC_COLORS[20] == (0, 64, 128)      # tvmonitor


def test_cityscapes_raw_ids_map_to_train_ids(tmp_path):
    raw = np.zeros((512, 1024), dtype=np.uint8)
    expected = np.full((512, 1024), 255, dtype=np.int64)
    # Stripes of every raw id 0..33; hand mapping from the spec.
    spec_map = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for raw_id in range(34):
        raw[:, raw_id * 30:(raw_id + 1) * 30] = raw_id
        expected[:, raw_id * 30:(raw_id + 1) * 30] = spec_map.get(raw_id, 255)
    expected[:, 34 * 30:] = 255  # raw id 0 there
    entries = [('train', 'bremen', 'bremen_000001_000019'), ('val', 'lindau', 'lindau_000000_000019')]
    build_city_tree(tmp_path, entries, [raw, raw])
    write_list(tmp_path / 'data_lists' / 'train.txt', ['bremen/bremen_000001_000019'])
    write_list(tmp_path / 'data_lists' / 'val.txt', ['lindau/lindau_000000_000019'])
    for list_name in ('train', 'val'):
        dataset = dp.build_dataset(dp.CITYSCAPES, tmp_path, list_name, 'gt',
                                   dp.build_transforms(dp.CITYSCAPES, 'eval'))
        item = dataset[0]
        assert item['image'].shape == (3, 512, 1024) and item['label'].dtype == torch.uint8
        assert np.array_equal(item['label'].numpy(), expected)


def test_cityscapes_base_resize_from_full_resolution(tmp_path):
    raw = np.full((1024, 2048), 26, dtype=np.uint8)  # car
    raw[:, :1024] = 7                                 # road
    build_city_tree(tmp_path, [('train', 'ulm', 'ulm_000000_000019')], [raw], image_size=(1024, 2048))
    write_list(tmp_path / 'data_lists' / 'train.txt', ['ulm/ulm_000000_000019'])
    dataset = dp.build_dataset(dp.CITYSCAPES, tmp_path, 'train', 'gt',
                               dp.build_transforms(dp.CITYSCAPES, 'eval'))
    item = dataset[0]
    label = item['label']
    assert item['image'].shape == (3, 512, 1024) and label.shape == (512, 1024)
    assert tuple(item['own_size'].tolist()) == (512, 1024) and tuple(item['file_size'].tolist()) == (1024, 2048)
    assert (label[:, :512] == 0).all() and (label[:, 512:] == 13).all()
    # Evaluated at full resolution (--full-resolution) the same file keeps its size.
    full = dp.build_dataset(dp.full_resolution(dp.CITYSCAPES), tmp_path, 'train', 'gt',
                            dp.build_transforms(dp.full_resolution(dp.CITYSCAPES), 'eval'))[0]
    assert full['image'].shape == (3, 1024, 2048) and full['label'].shape == (1024, 2048)
    assert tuple(full['own_size'].tolist()) == (1024, 2048)


def test_splits_read_from_data_splits_unless_the_dataset_has_its_own(voc14_root, tmp_path):
    found = dp.find_list(dp.VOC, voc14_root, '106_labeled_0')
    assert found == dp.VOC.splits_dir / '106_labeled_0.txt'
    own = voc14_root / 'ImageSets' / 'Segmentation' / '106_labeled_0.txt'
    write_list(own, ['voc_val_sample_000'])
    try:
        assert dp.find_list(dp.VOC, voc14_root, '106_labeled_0') == own
    finally:
        own.unlink()
    assert dp.find_list(dp.VOC, voc14_root, 'val') == voc14_root / 'ImageSets' / 'Segmentation' / 'val.txt'


def test_root_from_flag_environment_and_default(tmp_path, monkeypatch):
    monkeypatch.delenv('DSTCBC_VOC_ROOT', raising=False)
    assert dp.resolve_root(dp.VOC, str(tmp_path)) == tmp_path
    monkeypatch.setenv('DSTCBC_VOC_ROOT', str(tmp_path))
    assert dp.resolve_root(dp.VOC) == tmp_path
    monkeypatch.setenv('DSTCBC_VOC_ROOT', str(tmp_path / 'nowhere'))
    with pytest.raises(InputError, match='nowhere.*DSTCBC_VOC_ROOT'):
        dp.resolve_root(dp.VOC)


# --- bad input: one line naming the file -------------------------------------------------------

def one_line(error):
    message = str(error.value)
    assert '\n' not in message
    return message


def test_missing_root_is_named(tmp_path):
    with pytest.raises(InputError) as error:
        dp.resolve_root(dp.VOC, str(tmp_path / 'no_voc_here'))
    assert 'no_voc_here' in one_line(error)


def test_missing_list_is_named(voc14_root):
    with pytest.raises(InputError) as error:
        dp.build_dataset(dp.VOC, voc14_root, 'no_such_list', 'gt', None)
    assert 'no_such_list.txt' in one_line(error)


def test_missing_image_named_in_list(voc14_root):
    write_list(voc14_root / 'ImageSets' / 'Segmentation' / 'ghost.txt', ['voc_val_sample_000', 'ghost_id'])
    with pytest.raises(InputError) as error:
        dp.build_dataset(dp.VOC, voc14_root, 'ghost', 'gt', None)
    message = one_line(error)
    assert 'ghost_id.jpg' in message and 'ghost.txt' in message


@pytest.mark.parametrize('entry', ['../outside', '/etc/passwd', 'a/../../b'])
def test_list_entry_escaping_the_root(voc14_root, entry):
    write_list(voc14_root / 'ImageSets' / 'Segmentation' / 'escape.txt', ['voc_val_sample_000', entry])
    with pytest.raises(InputError) as error:
        dp.build_dataset(dp.VOC, voc14_root, 'escape', 'gt', None)
    message = one_line(error)
    assert 'escape.txt line 2' in message and entry in message


def make_voc_pair(root, name, label, size=None):
    (root / 'JPEGImages').mkdir(parents=True, exist_ok=True)
    (root / 'SegmentationClassAug').mkdir(parents=True, exist_ok=True)
    height, width = size or label.shape
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(root / 'JPEGImages' / f'{name}.jpg')
    Image.fromarray(label.astype(np.uint8)).save(root / 'SegmentationClassAug' / f'{name}.png')
    write_list(root / 'ImageSets' / 'Segmentation' / 'train.txt', [name])
    return dp.build_dataset(dp.VOC, root, 'train', 'gt', dp.build_transforms(dp.VOC, 'eval'))


def test_voc_label_value_out_of_range(tmp_path):
    label = np.zeros((20, 30))
    label[3, 4] = 21
    dataset = make_voc_pair(tmp_path, 'bad_value', label)
    with pytest.raises(InputError) as error:
        dataset[0]
    message = one_line(error)
    assert 'bad_value.png' in message and '21' in message


def test_cityscapes_label_value_out_of_range(tmp_path):
    raw = np.full((512, 1024), 7, np.uint8)
    raw[0, 0] = 34
    build_city_tree(tmp_path, [('train', 'ulm', 'ulm_000001_000019')], [raw])
    write_list(tmp_path / 'data_lists' / 'train.txt', ['ulm/ulm_000001_000019'])
    dataset = dp.build_dataset(dp.CITYSCAPES, tmp_path, 'train', 'gt',
                               dp.build_transforms(dp.CITYSCAPES, 'eval'))
    with pytest.raises(InputError) as error:
        dataset[0]
    message = one_line(error)
    assert 'ulm_000001_000019_gtFine_labelIds.png' in message and '34' in message


def test_image_and_label_of_different_sizes(tmp_path):
    dataset = make_voc_pair(tmp_path, 'mismatch', np.zeros((20, 30)), size=(21, 30))
    with pytest.raises(InputError) as error:
        dataset[0]
    message = one_line(error)
    assert 'mismatch.png' in message and 'mismatch.jpg' in message


def test_rgb_label_is_refused(tmp_path):
    dataset = make_voc_pair(tmp_path, 'colour', np.zeros((20, 30)))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / 'SegmentationClassAug' / 'colour.png')
    with pytest.raises(InputError) as error:
        dataset[0]
    assert 'colour.png' in one_line(error)


def test_image_larger_than_the_evaluation_canvas(voc14_root):
    chain = dp.build_transforms(dp.VOC, 'eval', eval_size=(400, 400))   # the photographs are 500 on a side
    dataset = dp.build_dataset(dp.VOC, voc14_root, 'val', 'gt', transforms=chain)
    with pytest.raises(InputError) as error:
        dataset[0]
    message = one_line(error)
    assert '.jpg' in message and '--eval-size' in message
