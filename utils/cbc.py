"""Pseudo-labeling with class-balanced thresholds (CBC, spec section 7) in one forward pass.

The original ran the network twice over the unlabeled set, once to gather confidences for the
thresholds and once to write labels. Here one pass keeps, per image, the max probability and its
class at the image's own size (in memory up to a budget, then on disk), plus every 16th pixel for
the thresholds; the labels are then written from what was kept.

Each label folder carries `pseudo_labels.json`, which says which checkpoint (by SHA-256) and
ratio made it and whether it is complete. It is written "incomplete" before the first label and
"complete" after the last, so a stale or half-written folder is refused, never trained on.
"""
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_processing import IGNORE_INDEX, pseudo_label_path
from utils.context import finish, scores_summary
from utils.errors import InputError
from utils.experiment import write_json
from utils.files import atomic_path, write_failure
from utils.metrics import ConfusionMatrix
from utils.training import upsample
from utils.transforms import resize_label

SAMPLE_STRIDE = 16           # thresholds come from every 16th pixel of each flattened map
EMPTY_CLASS_THRESHOLD = 1e-5
MANIFEST_NAME = 'pseudo_labels.json'
CACHE_DIR_NAME = '.prediction-cache'


def class_thresholds(sample_probs, sample_classes, num_classes, ratio):
    """Per class c, the confidence above which a pixel predicted c keeps its label.

    From the ascending max probabilities of the sampled pixels predicted c (count of them):
    ratio >= 1 -> the smallest; count * ratio < 1 -> 1e-5; else the value at position
    [-int(count * ratio) - 1], so about the top `ratio` share of each class survives.
    """
    thresholds = []
    for class_index in range(num_classes):
        values = torch.sort(sample_probs[sample_classes == class_index]).values
        count = values.numel()
        if ratio >= 1 and count > 0:
            threshold = values[0].item()
        elif count * ratio < 1:
            threshold = EMPTY_CLASS_THRESHOLD
        else:
            threshold = values[-int(count * ratio) - 1].item()
        thresholds.append(threshold)
    return thresholds


def apply_thresholds(max_prob, predicted, thresholds):
    """Keep the predicted class where its probability reaches the class threshold, else 255."""
    limits = torch.tensor(thresholds, dtype=max_prob.dtype)[predicted.long()]
    return torch.where(max_prob >= limits, predicted.long(), torch.full_like(predicted, IGNORE_INDEX, dtype=torch.long))


class PredictionStore:
    """Max probability (float32) and class (uint8) per image, between the pass and the writing.

    Kept in memory up to `budget_bytes` (5 bytes a pixel), then spilled to `spill_dir`.
    """

    def __init__(self, budget_bytes, spill_dir):
        self.budget_bytes = budget_bytes
        self.spill_dir = Path(spill_dir)
        self.in_memory = {}
        self.used_bytes = 0
        self.spilled = 0

    def put(self, key, max_prob, predicted):
        size = max_prob.numel() * 5
        if self.used_bytes + size <= self.budget_bytes:
            self.in_memory[key] = (max_prob, predicted)
            self.used_bytes += size
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        torch.save({'max_prob': max_prob, 'predicted': predicted}, self.spill_dir / f'{key}.pt')
        self.spilled += 1

    def pop(self, key):
        if key in self.in_memory:
            max_prob, predicted = self.in_memory.pop(key)
            self.used_bytes -= max_prob.numel() * 5
            return max_prob, predicted
        path = self.spill_dir / f'{key}.pt'
        stored = torch.load(path, weights_only=True)
        path.unlink()
        return stored['max_prob'], stored['predicted']

    def clear(self):
        self.in_memory.clear()
        self.used_bytes = 0
        shutil.rmtree(self.spill_dir, ignore_errors=True)


@torch.no_grad()
def predict_unlabeled(model, loader, runtime, store):
    """The one forward pass: fill `store`, return the sampled (probabilities, classes).

    Logits are upsampled to the padded evaluation size, cut back to the image's own size, then
    softmaxed (the original upsampled to the 321 crop size: misaligned labels, spec section 13).
    """
    model.eval()
    sampled_probs, sampled_classes = [], []
    for images, indices, own_sizes in tqdm(loader, desc='pseudo-labeling: predict', dynamic_ncols=True, disable=None):
        images = images.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)['out']
        logits = upsample(logits.float(), images.shape[-2:])
        for logit, index, (height, width) in zip(logits, indices.tolist(), own_sizes.tolist()):
            probs = torch.softmax(logit[:, :height, :width], dim=0)
            max_prob, predicted = probs.max(dim=0)
            max_prob, predicted = max_prob.cpu(), predicted.to(torch.uint8).cpu()
            sampled_probs.append(max_prob.flatten()[::SAMPLE_STRIDE])
            sampled_classes.append(predicted.flatten()[::SAMPLE_STRIDE])
            store.put(index, max_prob, predicted)
    return torch.cat(sampled_probs), torch.cat(sampled_classes)


def write_png(label, path):
    """A uint8 PNG, written atomically."""
    try:
        with atomic_path(path) as temporary:
            Image.fromarray(label.numpy().astype(np.uint8), mode='L').save(temporary, format='PNG')
    except OSError as error:
        raise InputError(f'{path}: cannot write pseudo label ({write_failure(error)}); the folder is '
                         f'marked incomplete and will not be trained on') from None


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def names_digest(names):
    return hashlib.sha256('\n'.join(names).encode()).hexdigest()


def read_manifest(pseudo_label_dir):
    path = Path(pseudo_label_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError(f'{path}: unreadable pseudo-label manifest') from None


def matches(manifest, checkpoint_sha256, ratio, names):
    return (manifest is not None and manifest.get('complete') is True
            and manifest.get('checkpoint_sha256') == checkpoint_sha256
            and manifest.get('ratio') == ratio
            and manifest.get('names_sha256') == names_digest(names))


def check_pseudo_labels(pseudo_label_dir, checkpoint_sha256, ratio, names):
    """Refuse a folder that is incomplete or was made from another checkpoint, ratio or list."""
    manifest = read_manifest(pseudo_label_dir)
    where = Path(pseudo_label_dir) / MANIFEST_NAME
    if manifest is None:
        raise InputError(f'{where} not found: {pseudo_label_dir} holds no finished pseudo labels')
    if manifest.get('complete') is not True:
        raise InputError(f'{where}: pseudo labels are incomplete (labeling was interrupted)')
    if manifest.get('checkpoint_sha256') != checkpoint_sha256:
        raise InputError(f'{where}: pseudo labels come from checkpoint {manifest.get("checkpoint")}, '
                         f'not from the one expected (SHA-256 differs)')
    if manifest.get('ratio') != ratio:
        raise InputError(f'{where}: pseudo labels were made at ratio {manifest.get("ratio")}, not {ratio}')
    if manifest.get('names_sha256') != names_digest(names):
        raise InputError(f'{where}: pseudo labels were made for another image list ({manifest.get("list")})')
    return manifest


def claim_folder(pseudo_label_dir, experiment_name):
    """May this experiment (re)write labels here? Only into its own or an empty folder."""
    folder = Path(pseudo_label_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        if folder.is_dir() and any(folder.iterdir()):
            raise InputError(f'{folder}: folder is not empty and holds no {MANIFEST_NAME}; '
                             f'choose an empty --pseudo-dir')
        return
    owner = manifest.get('experiment')
    if owner != experiment_name:
        raise InputError(f'{folder}: holds pseudo labels of experiment {owner!r} (checkpoint '
                         f'{manifest.get("checkpoint")}, ratio {manifest.get("ratio")}); '
                         f'choose another --pseudo-dir')


def generate_pseudo_labels(model, dataset, loader, *, ratio, pseudo_label_dir, checkpoint_path,
                           checkpoint_sha256, experiment_name, runtime, memory_budget_mb, log):
    """Label every image of `dataset` (mode 'unlabeled') and return the report of spec section 7.

    Reuses a complete folder made from the same checkpoint, ratio and list.
    """
    folder = Path(pseudo_label_dir)
    names = dataset.names
    existing = read_manifest(folder)
    if matches(existing, checkpoint_sha256, ratio, names):
        log(f'pseudo labels in {folder} already match this checkpoint and ratio {ratio:.4g}: reused')
        return existing
    claim_folder(folder, experiment_name)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        'format': 'dstcbc-pseudo-v1', 'complete': False, 'experiment': experiment_name,
        'checkpoint': str(checkpoint_path), 'checkpoint_sha256': checkpoint_sha256, 'ratio': ratio,
        'dataset': dataset.info.key, 'list': str(dataset.list_path), 'count': len(names),
        'names_sha256': names_digest(names), 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    write_json(folder / MANIFEST_NAME, manifest)

    store = PredictionStore(memory_budget_mb * 2 ** 20, folder / CACHE_DIR_NAME)
    try:
        sampled_probs, sampled_classes = predict_unlabeled(model, loader, runtime, store)
        thresholds = class_thresholds(sampled_probs, sampled_classes, dataset.info.num_classes, ratio)
        if store.spilled:
            log(f'pseudo-labeling: {store.spilled} of {len(names)} prediction maps went to disk '
                f'(raise --label-memory-mb to keep more in memory)')
        has_ground_truth = all(dataset.info.label_path(dataset.root, name, dataset.subset).is_file()
                               for name in names)
        quality = ConfusionMatrix(dataset.info.num_classes) if has_ground_truth else None
        labeled_pixels = total_pixels = 0
        for index in tqdm(range(len(names)), desc='pseudo-labeling: write', dynamic_ncols=True, disable=None):
            max_prob, predicted = store.pop(index)
            label = apply_thresholds(max_prob, predicted, thresholds)
            write_png(label, pseudo_label_path(folder, names[index]))
            labeled_pixels += int((label != IGNORE_INDEX).sum())
            total_pixels += label.numel()
            if quality is not None:
                truth = resize_label(dataset.load_label(index), label.shape)
                quality.update(torch.where(label == IGNORE_INDEX, IGNORE_INDEX, truth), label)
    finally:
        store.clear()

    manifest.update(complete=True, finished=time.strftime('%Y-%m-%d %H:%M:%S'),
                    thresholds=thresholds, labeled_share=labeled_pixels / max(total_pixels, 1))
    if quality is not None:
        scores = quality.compute()
        manifest['pseudo_label_miou'] = None if scores.miou != scores.miou else scores.miou
        manifest['pseudo_label_scores'] = scores_summary(scores, dataset.info)
    write_json(folder / MANIFEST_NAME, manifest)
    quality_text = (f', mIoU of kept labels vs ground truth {manifest["pseudo_label_miou"] * 100:.2f} '
                    f'(diagnostic only)' if manifest.get('pseudo_label_miou') is not None else '')
    log(f'pseudo-labeling at ratio {ratio:.4g}: {len(names)} labels in {folder}, '
        f'{manifest["labeled_share"] * 100:.2f}% of pixels labeled{quality_text}')
    return manifest


def run_pseudo_labeling(context):
    """State 0: label the unlabeled list of --split/--sets-id with --continue-from at --label-ratio."""
    args = context.args
    ratio = args.label_ratio if args.label_ratio is not None else args.init_label_ratio
    model = context.build_model(initialise_backbone=False)
    if not args.continue_from:
        raise InputError('--continue-from is required for --state=0 (the checkpoint that labels)')
    context.load_weights(model, args.continue_from)
    dataset = context.dataset(context.unlabeled_list, 'unlabeled', 'eval')
    report = generate_pseudo_labels(
        model, dataset, context.eval_loader(dataset), ratio=ratio,
        pseudo_label_dir=context.experiment.pseudo_label_dir, checkpoint_path=args.continue_from,
        checkpoint_sha256=file_sha256(args.continue_from), experiment_name=context.experiment.name,
        runtime=context.runtime, memory_budget_mb=args.label_memory_mb, log=context.experiment.log)
    names = context.info.class_names
    finish(context, None, {
        'state': 0, 'ratio': ratio, 'pseudo_label_dir': str(context.experiment.pseudo_label_dir),
        'count': report['count'], 'labeled_share': report['labeled_share'],
        'thresholds': dict(zip(names, report['thresholds'])),
        'pseudo_label_miou': report.get('pseudo_label_miou'),
        'pseudo_label_scores': report.get('pseudo_label_scores')})
    return report
