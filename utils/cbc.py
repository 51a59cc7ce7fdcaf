"""Pseudo-labeling with class-balanced thresholds (CBC, spec section 7) in one forward pass, at the
paper's scale (10,476 VOC maps of about 375x500, or 2,876 Cityscapes maps of 512x1024, a round)
within a memory budget, on one process or several.

The original ran the network twice over the unlabeled set, once to gather confidences for the
thresholds and once to write labels. Here one pass keeps, per image, the max probability and its
class at the image's own size, and every 16th pixel for the thresholds; the labels are then
written from what was kept.

Memory. Nothing per image outlives the image in RAM except inside two fixed structures:
- `SampleBuffer` copies the sampled pixels into fixed-size chunks per class (4 bytes a sample;
  no view of a map survives);
- `PredictionStore` copies each map into an arena of large blocks, up to --label-memory-mb, and
  appends the rest to one spill file in a private cache folder (--cache-dir, local disk).
So the process holds the budget, the samples and a constant, whatever the number of images.

Thresholds. The rule (the value at position [-int(count x r) - 1] of each class's ascending
confidences) is computed exactly without sorting: probabilities are non-negative float32, whose
bit patterns order like the values, so two histogram passes over the 16 high and the 16 low bits
find the value at any position. Histograms add up across processes, so several processes get the
thresholds of one process by summing them (no gathering of samples).

Each label folder carries `pseudo_labels.json`, which says which checkpoint (by SHA-256) and
ratio made it and whether it is complete. It is written "incomplete" before the first label and
"complete" after the last, once every label is on disk (fsynced), so a stale or half-written
folder is refused, never trained on.
"""
import hashlib
import json
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_processing import IGNORE_INDEX, pseudo_label_path
from utils import distributed
from utils.device import HostCopy, to_host
from utils.errors import InputError, RunError
from utils.experiment import write_json
from utils.files import FolderLock, atomic_path, fsync_path, guarded_write
from utils.inference import Protocol, class_scores
from utils.metrics import ConfusionMatrix
from utils.transforms import resize_label

SAMPLE_STRIDE = 16           # thresholds come from every 16th pixel of each flattened map
EMPTY_CLASS_THRESHOLD = 1e-5
MANIFEST_NAME = 'pseudo_labels.json'
CACHE_PREFIX = 'dstcbc-prediction-cache-'
BYTES_PER_PIXEL = 5          # float32 max probability + uint8 class
HALF_BITS = 16


# --- the sampled pixels and the exact thresholds ---------------------------------------------

class SampleBuffer:
    """The sampled probabilities, kept per class (the class is implicit: 4 bytes a sample) as their
    float32 bit patterns, in fixed-size chunks. `add` copies, so nothing here refers to a map."""

    def __init__(self, num_classes, chunk_size=1 << 18):
        self.num_classes = num_classes
        self.chunk_size = chunk_size
        self.chunks = [[] for _ in range(num_classes)]
        self.filled = [0] * num_classes   # entries used in each class's last chunk
        self.count = 0

    def add(self, probabilities, classes):
        """Append 1-D float32 probabilities (any strides) and their classes."""
        bits = np.ascontiguousarray(probabilities, dtype=np.float32).view(np.uint32)
        classes = np.asarray(classes, dtype=np.uint8)
        order = np.argsort(classes, kind='stable')   # a radix sort for uint8: groups by class
        ends = np.cumsum(np.bincount(classes, minlength=self.num_classes))
        grouped = bits[order]
        start = 0
        for class_index, end in enumerate(ends.tolist()):
            if end > start:
                self._append(class_index, grouped[start:end])
            start = end
        self.count += len(bits)

    def _append(self, class_index, values):
        chunks = self.chunks[class_index]
        start = 0
        while start < len(values):
            if not chunks or self.filled[class_index] == self.chunk_size:
                chunks.append(np.empty(self.chunk_size, dtype=np.uint32))
                self.filled[class_index] = 0
            used = self.filled[class_index]
            take = min(self.chunk_size - used, len(values) - start)
            chunks[-1][used:used + take] = values[start:start + take]
            self.filled[class_index] += take
            start += take

    def class_chunks(self, class_index):
        """The bit patterns of one class, chunk by chunk, the last one cut to what is filled."""
        chunks = self.chunks[class_index]
        for number, chunk in enumerate(chunks):
            yield chunk[:self.filled[class_index]] if number == len(chunks) - 1 else chunk

    @property
    def nbytes(self):
        return sum(chunk.nbytes for chunks in self.chunks for chunk in chunks)


def class_histograms(buffer, select=None):
    """Per class, a histogram of the high 16 bits of its probabilities; with `select` (a bucket
    per class, -1 for none), of the low 16 bits of those in that class's bucket. Summed over all
    processes."""
    bins = 1 << HALF_BITS
    total = np.zeros((buffer.num_classes, bins), dtype=np.int64)
    for class_index in range(buffer.num_classes):
        bucket = -1 if select is None else int(select[class_index])
        if select is not None and bucket < 0:
            continue
        for chunk in buffer.class_chunks(class_index):
            high = chunk >> HALF_BITS
            values = high if select is None else (chunk[high == bucket] & (bins - 1))
            total[class_index] += np.bincount(values, minlength=bins)
    return distributed.sum_array(total)


def exact_thresholds(buffer, ratio):
    """Per class c, the confidence above which a pixel predicted c keeps its label.

    From the ascending max probabilities of the sampled pixels predicted c (count of them):
    ratio >= 1 -> the smallest; count * ratio < 1 -> 1e-5; else the value at position
    [-int(count * ratio) - 1], so about the top `ratio` share of each class survives.
    """
    return thresholds_and_counts(buffer, ratio)[0]


def thresholds_and_counts(buffer, ratio):
    """`exact_thresholds` and, per class, how many sampled pixels were predicted as it (summed
    over all processes)."""
    num_classes = buffer.num_classes
    high_histograms = class_histograms(buffer)
    counts = high_histograms.sum(axis=1)
    positions = []
    for count in counts.tolist():
        if ratio >= 1 and count > 0:
            positions.append(0)
        elif count * ratio < 1:
            positions.append(None)
        else:
            positions.append(count - int(count * ratio) - 1)
    select = np.full(num_classes, -1, dtype=np.int64)
    remaining = [None] * num_classes
    for class_index, position in enumerate(positions):
        if position is not None:
            cumulative = np.cumsum(high_histograms[class_index])
            bucket = int(np.searchsorted(cumulative, position, side='right'))
            select[class_index] = bucket
            remaining[class_index] = position - (int(cumulative[bucket - 1]) if bucket else 0)
    low_histograms = class_histograms(buffer, select=select)
    thresholds = []
    for class_index, position in enumerate(positions):
        if position is None:
            thresholds.append(EMPTY_CLASS_THRESHOLD)
            continue
        cumulative = np.cumsum(low_histograms[class_index])
        low = int(np.searchsorted(cumulative, remaining[class_index], side='right'))
        bits = np.array([(int(select[class_index]) << HALF_BITS) | low], dtype=np.uint32)
        thresholds.append(float(bits.view(np.float32)[0]))
    return thresholds, [int(count) for count in counts.tolist()]


def class_thresholds(sample_probs, sample_classes, num_classes, ratio):
    """The thresholds of `exact_thresholds` from two 1-D arrays (tensors or numpy)."""
    buffer = SampleBuffer(num_classes)
    buffer.add(np.asarray(sample_probs, dtype=np.float32).reshape(-1),
               np.asarray(sample_classes).reshape(-1).astype(np.uint8))
    return exact_thresholds(buffer, ratio)


def apply_thresholds(max_prob, predicted, thresholds):
    """Keep the predicted class where its probability reaches the class threshold, else 255.
    numpy or torch in, uint8 numpy out."""
    max_prob = np.asarray(max_prob, dtype=np.float32)
    predicted = np.asarray(predicted).astype(np.intp)
    limits = np.asarray(thresholds, dtype=np.float32)[predicted]
    return np.where(max_prob >= limits, predicted, IGNORE_INDEX).astype(np.uint8)


# --- the prediction maps between the pass and the writing -------------------------------------

class PredictionStore:
    """Max probability (float32) and class (uint8) per image, between the pass and the writing.

    Maps are copied into an arena of blocks of at most `block_bytes`, allocated as needed up to
    `budget_bytes` (5 bytes a pixel), then appended to one spill file in `spill_dir`. Blocks are
    large and live until `close`, so the heap never fragments around thousands of small maps, and
    a spilled map leaves RAM as soon as it is written.
    """

    def __init__(self, budget_bytes, spill_dir, block_bytes=64 << 20):
        self.budget_bytes = int(budget_bytes)
        self.block_bytes = block_bytes
        self.spill_dir = Path(spill_dir)
        self.blocks = []
        self.block_used = 0
        self.reserved = 0
        self.entries = {}
        self.spill_file = None
        self.spill_size = 0
        self.spilled = 0

    def _arena_slot(self, nbytes):
        if self.blocks and self.block_used + nbytes <= len(self.blocks[-1]):
            block = len(self.blocks) - 1
        else:
            size = max(min(self.block_bytes, self.budget_bytes - self.reserved), nbytes)
            if self.reserved + size > self.budget_bytes:
                return None
            self.blocks.append(np.empty(size, dtype=np.uint8))
            self.reserved += size
            self.block_used, block = 0, len(self.blocks) - 1
        offset = self.block_used
        self.block_used += (nbytes + 7) // 8 * 8
        return block, offset

    def put(self, key, max_prob, predicted):
        """Copy one map in (numpy arrays, or tensors: device tensors come through `to_host`)."""
        height, width = max_prob.shape
        pixels = height * width
        slot = self._arena_slot(pixels * BYTES_PER_PIXEL)
        if slot is not None:
            block, offset = slot
            memory = self.blocks[block][offset:offset + pixels * BYTES_PER_PIXEL]
            copy_into(memory[:pixels * 4].view(np.float32).reshape(height, width), max_prob)
            copy_into(memory[pixels * 4:].reshape(height, width), predicted)
            self.entries[key] = ('memory', block, offset, height, width)
            return
        if self.spill_file is None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            self.spill_file = open(self.spill_dir / 'maps.bin', 'w+b')
        with guarded_write(self.spill_dir / 'maps.bin', 'prediction cache'):
            self.spill_file.write(as_numpy(max_prob, np.float32).data)
            self.spill_file.write(as_numpy(predicted, np.uint8).data)
        self.entries[key] = ('disk', None, self.spill_size, height, width)
        self.spill_size += pixels * BYTES_PER_PIXEL
        self.spilled += 1

    def get(self, key):
        """(max_prob float32 [h, w], classes uint8 [h, w]); safe from several threads."""
        where, block, offset, height, width = self.entries[key]
        pixels = height * width
        if where == 'memory':
            memory = self.blocks[block][offset:offset + pixels * BYTES_PER_PIXEL]
        else:
            memory = np.frombuffer(os.pread(self.spill_file.fileno(), pixels * BYTES_PER_PIXEL, offset),
                                   dtype=np.uint8)
        return (memory[:pixels * 4].view(np.float32).reshape(height, width),
                memory[pixels * 4:].reshape(height, width))

    def finish_writing(self):
        if self.spill_file is not None:
            self.spill_file.flush()

    @property
    def memory_bytes(self):
        return self.reserved

    def close(self):
        self.blocks.clear()
        self.entries.clear()
        if self.spill_file is not None:
            self.spill_file.close()
            self.spill_file = None


def as_numpy(value, dtype):
    if isinstance(value, torch.Tensor):
        value = to_host(value).numpy()
    return np.ascontiguousarray(value, dtype=dtype)


def copy_into(target, value):
    """Copy a host tensor or array into a numpy view (one copy: a CPU tensor is viewed as numpy;
    a device tensor comes to the host through `to_host` first)."""
    target[...] = as_numpy(value, target.dtype) if isinstance(value, torch.Tensor) else value


class PredictionCache:
    """The folder where this process spills maps: `<root>/dstcbc-prediction-cache-<host>-<pid>`,
    private to the process (it holds a lock on it while it lives) and removed at the end. Caches
    of killed runs (no live holder) under the same root are removed when a new one starts."""

    def __init__(self, root):
        self.root = Path(root)
        self.path = self.root / f'{CACHE_PREFIX}{socket.gethostname()}-{os.getpid()}'
        self.lock = FolderLock(self.path / 'lock')
        self.removed = []

    def __enter__(self):
        self.remove_stale()
        self.lock.acquire(f'prediction cache {self.path}')
        return self

    def remove_stale(self):
        if not self.root.is_dir():
            return
        for folder in self.root.glob(f'{CACHE_PREFIX}*'):
            if folder == self.path or not folder.is_dir():
                continue
            probe = FolderLock(folder / 'lock')
            try:
                probe.acquire('stale prediction cache')
            except (InputError, RunError):
                continue   # a live run's cache
            probe.release()
            shutil.rmtree(folder, ignore_errors=True)
            self.removed.append(folder)

    def __exit__(self, *exc):
        self.lock.release()
        shutil.rmtree(self.path, ignore_errors=True)


# --- the pass ----------------------------------------------------------------------------------

@torch.no_grad()
def predict_unlabeled(model, loader, runtime, store, samples, protocol=Protocol()):
    """The one forward pass over this rank's share: each map into `store`, every 16th pixel into
    `samples`. Logits are upsampled to the padded evaluation size, cut back to the image's own
    size, then softmaxed (the original upsampled to the 321 crop size: misaligned labels, spec
    section 13). A data error, or a stop request (asked between batches), is agreed with the other
    ranks after the pass.

    The per-pixel work (upsampling, softmax, max) runs on the device; each batch's maps then go
    to pinned host memory behind it, and the host stores the previous batch's maps while the
    device computes the next one.
    """
    model.eval()
    error = None
    in_flight = None
    try:
        for batch in runtime.stop.until_stopped(tqdm(loader, desc='pseudo-labeling: predict', dynamic_ncols=True,
                                                     disable=None if runtime.is_main else True)):
            images, _ = runtime.to_device(batch)
            maps = HostCopy(own_size_maps(model, images, batch['own_size'].tolist(), runtime, protocol))
            if in_flight is not None:
                keep_maps(*in_flight, store, samples, loader.dataset)
            in_flight = (maps, batch['index'].tolist())
        if in_flight is not None:
            keep_maps(*in_flight, store, samples, loader.dataset)
    except RunError as failure:
        error = failure
    distributed.agree_on_errors(error)
    store.finish_writing()


def own_size_maps(model, images, own_sizes, runtime, protocol=Protocol()):
    """Per image, its max probability (float32) and class (uint8) maps at its own size, on the
    device: [max_prob_0, class_0, max_prob_1, class_1, ...]. A dataset whose description gives
    a sliding window is labeled window by window, as it is evaluated (probabilities averaged)."""
    scores = class_scores(model, images, images.shape[-2:], runtime, protocol)   # logits of a single view
    maps = []
    for score, (height, width) in zip(scores, own_sizes):
        crop = score[:, :height, :width]
        probabilities = torch.softmax(crop, dim=0) if protocol.single_view else crop
        max_prob, predicted = probabilities.max(dim=0)
        maps += [max_prob, predicted.to(torch.uint8)]
    return maps


def keep_maps(maps, indices, store, samples, dataset):
    """Store one batch's maps (once their copy has arrived) and sample every 16th pixel."""
    host = maps.wait()
    for position, index in enumerate(indices):
        max_prob, predicted = host[2 * position].numpy(), host[2 * position + 1].numpy()
        sampled_prob = max_prob.reshape(-1)[::SAMPLE_STRIDE]
        if not np.isfinite(sampled_prob).all():   # a diverged network is NaN everywhere
            raise InputError(f'the checkpoint predicts NaN or infinite probabilities for '
                             f'{dataset.image_path(index)}: a diverged network?')
        samples.add(sampled_prob, predicted.reshape(-1)[::SAMPLE_STRIDE])
        store.put(index, max_prob, predicted)


# --- writing -----------------------------------------------------------------------------------

def write_png(label, path):
    """A uint8 PNG, written atomically and fsynced (the manifest says complete only once every
    label is on disk)."""
    with guarded_write(path, 'pseudo label'), atomic_path(path) as temporary:
        with open(temporary, 'wb') as file:
            Image.fromarray(np.asarray(label, dtype=np.uint8), mode='L').save(file, format='PNG')
            file.flush()
            os.fsync(file.fileno())


def label_quality(dataset, index, label, num_classes):
    """Counts of (ground truth, kept label) for one image, or the reason its ground truth could
    not be used (the score is diagnostic only, so a bad ground truth never stops labeling)."""
    try:
        truth = dataset.load_ground_truth(index)
    except InputError as error:
        return None, str(error)
    truth = resize_label(truth, label.shape).numpy().astype(np.int64)
    kept = label != IGNORE_INDEX
    cells = truth[kept] * num_classes + label[kept].astype(np.int64)
    valid = truth[kept] < num_classes
    counts = np.bincount(cells[valid], minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes), None


def write_one(store, dataset, folder, index, thresholds, with_quality):
    max_prob, predicted = store.get(index)
    label = apply_thresholds(max_prob, predicted, thresholds)
    write_png(label, pseudo_label_path(folder, dataset.names[index]))
    quality = label_quality(dataset, index, label, dataset.info.num_classes) if with_quality else (None, None)
    return int((label != IGNORE_INDEX).sum()), label.size, quality


def write_labels(store, dataset, folder, indices, thresholds, with_quality, threads, stop=None):
    """Write this rank's labels with `threads` threads (PNG encoding and fsync run outside the
    GIL); returns labeled pixels, total pixels, the quality matrix and the unusable ground truths.
    `stop` (a StopRequest) is asked before each label is handed to a thread: the labels already
    handed over are written whole (each atomically), the rest not."""
    num_classes = dataset.info.num_classes
    labeled = total = 0
    quality = np.zeros((num_classes, num_classes), dtype=np.int64)
    bad_truths = []
    first_error = None
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        pending = {}
        progress = tqdm(total=len(indices), desc='pseudo-labeling: write', dynamic_ncols=True, disable=None)
        for position, index in enumerate(indices):
            if stop:
                first_error = stop.error()
                break
            pending[index] = pool.submit(write_one, store, dataset, folder, index, thresholds, with_quality)
            # Keep a bounded window in flight, collected in order (the first error is reported).
            if len(pending) >= 4 * max(threads, 1) or position == len(indices) - 1:
                for done_index in list(pending):
                    try:
                        kept, pixels, (counts, bad_truth) = pending.pop(done_index).result()
                    except RunError as error:
                        first_error = first_error or error
                        continue
                    labeled += kept
                    total += pixels
                    if counts is not None:
                        quality += counts
                    if bad_truth is not None:
                        bad_truths.append(bad_truth)
                    progress.update(1)
                if first_error is not None:
                    for future in pending.values():
                        future.cancel()
                    break
        progress.close()
    if first_error is not None:
        raise first_error
    return labeled, total, quality, bad_truths


# --- the manifest ------------------------------------------------------------------------------

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


def missing_pseudo_labels(pseudo_label_dir, names):
    """The label files of `names` that are not in the folder (a manifest saying complete does
    not bring back a label deleted since)."""
    return [path for path in (pseudo_label_path(pseudo_label_dir, name) for name in names) if not path.is_file()]


def reusable_pseudo_labels(pseudo_label_dir, checkpoint_sha256, ratio, names, manifest=None):
    """A complete folder made by this checkpoint at this ratio for these names, every label
    file still there."""
    manifest = read_manifest(pseudo_label_dir) if manifest is None else manifest
    return (matches(manifest, checkpoint_sha256, ratio, names)
            and not missing_pseudo_labels(pseudo_label_dir, names))


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
    """May this experiment (re)write labels here? Only into its own or an empty folder. Called
    before any work, so another experiment's folder is refused at once."""
    folder = Path(pseudo_label_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        if folder.is_dir() and any(path.name != 'lock' for path in folder.iterdir()):
            raise InputError(f'{folder}: folder is not empty and holds no {MANIFEST_NAME}; '
                             f'choose an empty --pseudo-dir')
        return
    owner = manifest.get('experiment')
    if owner != experiment_name:
        raise InputError(f'{folder}: holds pseudo labels of experiment {owner!r} (checkpoint '
                         f'{manifest.get("checkpoint")}, ratio {manifest.get("ratio")}); '
                         f'choose another --pseudo-dir')


def claim_folder_once(pseudo_label_dir, experiment_name):
    """`claim_folder` by the main process only (the others would race with its writes), agreed by
    all processes."""
    error = None
    if distributed.is_main():
        try:
            claim_folder(pseudo_label_dir, experiment_name)
        except RunError as failure:
            error = failure
    distributed.agree_on_errors(error)


def write_manifest(folder, manifest):
    """Rank 0 writes; every rank learns whether it worked."""
    error = None
    if distributed.is_main():
        try:
            write_json(Path(folder) / MANIFEST_NAME, manifest)
        except RunError as failure:
            error = failure
    distributed.agree_on_errors(error)


def undefined_threshold_notes(class_names, sampled_counts, ratio):
    """What the labeler did for the classes whose CBC threshold the samples cannot define (count x
    ratio < 1): the original's 1e-5, kept for VOC's and Cityscapes' numbers, which keeps every
    pixel predicted as the class; for a user's own data that may be a class the network never
    learned. One note for the classes never predicted, one for those predicted on too few pixels."""
    never = [index for index, count in enumerate(sampled_counts) if count == 0]
    rarely = [index for index, count in enumerate(sampled_counts) if 0 < count and count * ratio < 1]
    rule = (f'so at ratio {ratio:.4g} {{their}} threshold is undefined and is {EMPTY_CLASS_THRESHOLD:g}, the '
            f'original\'s rule: every pixel predicted as {{it}} is kept')
    notes = []
    if never:
        notes.append(f'{class_list(class_names, never)}: the network predicts {pronoun(never)} on no sampled pixel, '
                     + rule.format(their='its' if len(never) == 1 else 'their', it=one_of(never)))
    if rarely:
        counts = ', '.join(str(sampled_counts[index]) for index in rarely)
        notes.append(f'{class_list(class_names, rarely)}: the network predicts {pronoun(rarely)} on only {counts} '
                     f'sampled pixel(s) (every {SAMPLE_STRIDE}th pixel is sampled), '
                     + rule.format(their='its' if len(rarely) == 1 else 'their', it=one_of(rarely)))
    return notes


def class_list(class_names, indices):
    """"class 'a' (1)" or "classes 'a' (1), 'b' (2)", for notes and warnings."""
    named = ', '.join(f'{class_names[index]!r} ({index})' for index in indices)
    return f'class{"es" if len(indices) > 1 else ""} {named}'


def pronoun(indices):
    return 'it' if len(indices) == 1 else 'them'


def one_of(indices):
    return 'it' if len(indices) == 1 else 'one of them'


# --- one labeling ------------------------------------------------------------------------------

def generate_pseudo_labels(model, dataset, loader, *, ratio, pseudo_label_dir, checkpoint_path,
                           checkpoint_sha256, experiment_name, runtime, memory_budget_mb, log,
                           cache_root=None, threads=2, protocol=Protocol()):
    """Label every image of `dataset` (mode 'unlabeled', this rank's share in `loader`) and return
    the report of spec section 7. Reuses a complete folder made from the same checkpoint, ratio
    and list. `cache_root` is where the private spill folder goes (default: the label folder's
    parent)."""
    folder = Path(pseudo_label_dir)
    names = dataset.names
    existing = read_manifest(folder) if distributed.is_main() else None
    reusable = existing is not None and reusable_pseudo_labels(folder, checkpoint_sha256, ratio, names, existing)
    existing = distributed.broadcast_object(existing if reusable else None)
    if existing is not None:
        log(f'pseudo labels in {folder} already match this checkpoint and ratio {ratio:.4g}: reused')
        return existing
    claim_folder_once(folder, experiment_name)
    manifest = {
        'format': 'dstcbc-pseudo-v1', 'complete': False, 'experiment': experiment_name,
        'checkpoint': str(checkpoint_path), 'checkpoint_sha256': checkpoint_sha256, 'ratio': ratio,
        'dataset': dataset.info.name, 'list': str(dataset.list_path), 'count': len(names),
        'names_sha256': names_digest(names), 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
        'world_size': distributed.world_size(),
    }
    write_manifest(folder, manifest)
    started = time.time()
    indices = distributed.shard(range(len(names)))
    samples = SampleBuffer(dataset.info.num_classes)
    with PredictionCache(cache_root or folder.parent) as cache:
        for stale in cache.removed:
            log(f'removed {stale}, a prediction cache left by a killed run')
        store = PredictionStore(memory_budget_mb * 2 ** 20, cache.path)
        try:
            predict_unlabeled(model, loader, runtime, store, samples, protocol)
            predicted_at = time.time()
            thresholds, sampled_counts = thresholds_and_counts(samples, ratio)
            thresholded_at = time.time()
            spilled, spill_bytes, memory_bytes = distributed.sum_numbers(
                [store.spilled, store.spill_size, store.memory_bytes], dtype=torch.int64)
            if spilled:
                log(f'pseudo-labeling: {spilled} of {len(names)} prediction maps went to disk '
                    f'(raise --label-memory-mb to keep more in memory)')
            with_quality = all(dataset.ground_truth_path(index).is_file() for index in indices)
            with_quality = distributed.sum_numbers([0 if with_quality else 1])[0] == 0
            error, written = None, None
            try:
                written = write_labels(store, dataset, folder, indices, thresholds, with_quality, threads,
                                       stop=runtime.stop)
            except RunError as failure:
                error = failure
            distributed.agree_on_errors(error)
        finally:
            store.close()
    labeled, total, quality, bad_truths = written
    total_samples = distributed.sum_numbers([samples.count], dtype=torch.int64)[0]
    labeled, total = distributed.sum_numbers([labeled, total], dtype=torch.int64)
    quality = distributed.sum_array(quality)
    bad_truths = [reason for part in distributed.gather_objects(bad_truths) for reason in part]
    if distributed.is_main():
        with guarded_write(folder, 'pseudo-label folder'):
            fsync_path(folder)   # every label's name is on disk before the manifest says complete
    manifest.update(complete=True, finished=time.strftime('%Y-%m-%d %H:%M:%S'),
                    thresholds=thresholds, labeled_share=labeled / max(total, 1),
                    prediction_cache={'memory_bytes': memory_bytes, 'spilled_maps': spilled,
                                      'spill_bytes': spill_bytes, 'sampled_pixels': total_samples},
                    seconds={'predict': round(predicted_at - started, 3),
                             'thresholds': round(thresholded_at - predicted_at, 3),
                             'write': round(time.time() - thresholded_at, 3)})
    if with_quality:
        matrix = ConfusionMatrix(dataset.info.num_classes)
        matrix.matrix += torch.from_numpy(quality)
        scores = matrix.compute()
        manifest['pseudo_label_miou'] = None if scores.miou != scores.miou else scores.miou
        manifest['pseudo_label_scores'] = scores.to_dict(list(dataset.info.class_names))
        if bad_truths:
            manifest['ground_truth_skipped'] = len(bad_truths)
            log(f'pseudo-label quality: {len(bad_truths)} ground-truth label(s) unusable and left out '
                f'of the diagnostic score (first: {bad_truths[0]})')
    manifest['notes'] = undefined_threshold_notes(dataset.info.class_names, sampled_counts, ratio)
    for note in manifest['notes']:
        log(f'pseudo-labeling: {note}')
    write_manifest(folder, manifest)
    quality_text = (f', mIoU of kept labels vs ground truth {manifest["pseudo_label_miou"] * 100:.2f} '
                    f'(diagnostic only)' if manifest.get('pseudo_label_miou') is not None else '')
    log(f'pseudo-labeling at ratio {ratio:.4g}: {len(names)} labels in {folder}, '
        f'{manifest["labeled_share"] * 100:.2f}% of pixels labeled{quality_text}')
    return manifest
