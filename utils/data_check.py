"""Every file of every list a run uses is decoded and checked before the first training step.

A bad label found at the first validation would throw away all the steps before it; a missing
file found mid-epoch would stop a run hours in. So each list is checked up front: the image
exists and decodes, the label (where the list has labels) exists, is no lossy file, decodes as
its dataset's description says (utils/label_encoding.py: only known values or colours) and has
the image's size, and no two ids name the same image file. Each label's class pixel counts are
kept, for the warnings about classes the labeled images lack (utils/context.py).

The check runs in threads (Pillow decodes outside the GIL) and, in a distributed run, each rank
checks its share. What passed is remembered per list in `<cache dir>/<key>.json` by file size and
modification time, so a second run over a 10k-image list only stats the files.
"""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import distributed
from utils.errors import InputError
from utils.files import atomic_path
from utils.images import image_size   # moved there; still importable from here

CACHE_FORMAT = 'dstcbc-data-check-v2'


@dataclass
class CheckReport:
    """What the check of one list found: each image's (height, width), and the pixels of each
    class over its labels (None for a list checked without labels)."""
    sizes: list
    class_pixels: np.ndarray | None


def file_stamp(path):
    """(size, mtime in ns, inode, device) of a file, or None when it does not exist."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ino, status.st_dev]


def check_entry(dataset, index, with_labels):
    """Check one entry; returns its record (stamps and size) or raises InputError."""
    image_path = dataset.image_path(index)
    image_stamp = file_stamp(image_path)
    if image_stamp is None:
        raise InputError(f'{image_path}: file not found{dataset.listed_at(index)}')
    height, width = image_size(image_path)
    record = {'image': image_stamp, 'size': [height, width]}
    if with_labels:
        label_path = dataset.label_path(index)
        label_stamp = file_stamp(label_path)
        if label_stamp is None:
            raise InputError(f'{label_path}: file not found{dataset.listed_at(index)}')
        (label_height, label_width), counts = dataset.info.encoding.survey(label_path)
        if (label_height, label_width) != (height, width):
            raise InputError(f'{label_path}: label is {label_height}x{label_width} but its image '
                             f'{image_path} is {height}x{width}{dataset.listed_at(index)}')
        record['label'] = label_stamp
        record['class_pixels'] = counts.tolist()
    return record


def cache_path(dataset, cache_dir, with_labels):
    """One cache file per list file, root and check kind."""
    key = json.dumps([str(Path(dataset.list_path or '').resolve()), str(dataset.root.resolve()),
                      dataset.info.digest, dataset.subset, with_labels])
    return Path(cache_dir) / f'{hashlib.sha256(key.encode()).hexdigest()[:20]}.json'


def read_cache(path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data.get('entries', {}) if data.get('format') == CACHE_FORMAT else {}


def still_valid(record, dataset, index, with_labels):
    if record is None or record.get('image') != file_stamp(dataset.image_path(index)):
        return False
    return not with_labels or record.get('label') == file_stamp(dataset.label_path(index))


def check_dataset(dataset, cache_dir, threads, log=None, stop=None):
    """Check every entry of `dataset` (images; labels too unless mode 'unlabeled'); raise the first
    error (in list order) as one line. Returns a CheckReport (sizes, class pixels). `stop` (a
    StopRequest) is asked between files: a 10k-image list takes minutes the first time."""
    with_labels = dataset.mode == 'gt'
    cache_file = cache_path(dataset, cache_dir, with_labels)
    cached = read_cache(cache_file)
    mine = distributed.shard(range(len(dataset)))
    todo = [index for index in mine
            if not still_valid(cached.get(dataset.names[index]), dataset, index, with_labels)]
    records, error = {}, None
    for index in mine:
        if index not in todo:
            records[index] = cached[dataset.names[index]]
    if todo:
        with ThreadPoolExecutor(max(threads, 1)) as pool:
            futures = {index: pool.submit(check_entry, dataset, index, with_labels) for index in todo}
            for index in todo:   # list order, so the error reported is the first one
                if stop:
                    error = error or stop.error()
                    for future in futures.values():
                        future.cancel()
                    break
                try:
                    records[index] = futures[index].result()
                except InputError as failure:
                    error = error or failure
    distributed.agree_on_errors(error)
    gathered = {}
    for part in distributed.gather_objects(records):
        gathered.update(part)
    if distributed.is_main() and todo_anywhere(gathered, cached, dataset):
        entries = {dataset.names[index]: record for index, record in sorted(gathered.items())}
        try:
            with atomic_path(cache_file) as temporary:
                temporary.write_text(json.dumps({'format': CACHE_FORMAT, 'list': str(dataset.list_path),
                                                 'entries': entries}))
        except OSError:
            pass   # a cache that cannot be written only costs time next run
    if log is not None and todo:
        log(f'checked {len(todo)} files of {dataset.list_path or "the list"} '
            f'({len(dataset) - len(todo)} unchanged since the last check)')
    records = [gathered[index] for index in range(len(dataset))]
    check_distinct_files(dataset, records)
    pixels = None
    if with_labels:
        pixels = np.zeros(dataset.info.num_classes, dtype=np.int64)
        for record in records:
            pixels += np.asarray(record['class_pixels'], dtype=np.int64)
    return CheckReport([tuple(record['size']) for record in records], pixels)


def check_distinct_files(dataset, records):
    """Two ids of one list must not name one image file (a link, or a case-insensitive file
    system): it would be trained on twice as often, and its pseudo label written twice."""
    seen = {}
    for index, record in enumerate(records):
        identity = tuple(record['image'][2:4])
        if identity in seen:
            first = seen[identity]
            raise InputError(f'{dataset.list_path}: ids {dataset.names[first]!r}{line_of(dataset, first)} and '
                             f'{dataset.names[index]!r}{line_of(dataset, index)} name the same image file '
                             f'{dataset.image_path(index)}; list it once')
        seen[identity] = index


def line_of(dataset, index):
    return f' (line {dataset.line_numbers[index]})' if dataset.line_numbers else ''


def todo_anywhere(gathered, cached, dataset):
    return any(cached.get(dataset.names[index]) != record for index, record in gathered.items())



def class_pixels_of_ids(info, root, names, subset, threads=4):
    """{id: pixels of each class in its label} for ids of a dataset, decoded as its description
    says, in threads (generate_splits.py prints the shares of its sets from these)."""
    def count(name):
        return name, info.encoding.survey(info.label_path(root, name, subset))[1]

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        return dict(pool.map(count, names))
