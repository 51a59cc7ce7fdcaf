"""Every file of every list a run uses is decoded and checked before the first training step.

A bad label found at the first validation would throw away all the steps before it; a missing
file found mid-epoch would stop a run hours in. So each list is checked up front: the image
exists and decodes, the label (where the list has labels) exists, decodes, has the image's size
and only values 0..C-1 or 255 (Cityscapes: raw ids 0..33 or 255).

The check runs in threads (Pillow decodes outside the GIL) and, in a distributed run, each rank
checks its share. What passed is remembered per list in `<cache dir>/<key>.json` by file size and
modification time, so a second run over a 10k-image list only stats the files.
"""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

import data_processing as dp
from utils import distributed
from utils.errors import InputError
from utils.files import atomic_path

CACHE_FORMAT = 'dstcbc-data-check-v1'


def file_stamp(path):
    """(size, mtime in ns) of a file, or None when it does not exist."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return [status.st_size, status.st_mtime_ns]


def image_size(path):
    """Decode an image to check it is whole; return (height, width).

    JPEGs decode at 1/8 scale (libjpeg's DCT scaling still reads every coded block, so a cut-off
    file fails) and PNGs are verified chunk by chunk (CRCs), both far cheaper than a full decode.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == 'JPEG':
                image.draft('RGB', (max(width // 8, 1), max(height // 8, 1)))
                image.load()
            else:
                image.verify()
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(f'{path}: cannot read image ({" ".join(str(error).split())})') from None
    return height, width


def check_entry(dataset, index, with_labels):
    """Check one entry; returns its record (stamps and size) or raises InputError."""
    image_path = dataset.image_path(index)
    image_stamp = file_stamp(image_path)
    if image_stamp is None:
        raise InputError(f'{image_path}: file not found{listed_in(dataset)}')
    height, width = image_size(image_path)
    record = {'image': image_stamp, 'size': [height, width]}
    if with_labels:
        label_path = dataset.label_path(index)
        label_stamp = file_stamp(label_path)
        if label_stamp is None:
            raise InputError(f'{label_path}: file not found{listed_in(dataset)}')
        array = dp.read_label_array(label_path)
        dp.check_label_values(array, label_path, dataset.info.label_values)
        if tuple(array.shape) != (height, width):
            raise InputError(f'{label_path}: label is {tuple(array.shape)} but image {image_path} is '
                             f'{(height, width)}')
        record['label'] = label_stamp
    return record


def listed_in(dataset):
    return f' (listed in {dataset.list_path})' if dataset.list_path else ''


def cache_path(dataset, cache_dir, with_labels):
    """One cache file per list file, root and check kind."""
    key = json.dumps([str(Path(dataset.list_path or '').resolve()), str(dataset.root.resolve()),
                      dataset.info.key, dataset.subset, with_labels])
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
    error (in list order) as one line. Returns the image sizes, (height, width) per index.
    `stop` (a StopRequest) is asked between files: a 10k-image list takes minutes the first time."""
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
    return [tuple(gathered[index]['size']) for index in range(len(dataset))]


def todo_anywhere(gathered, cached, dataset):
    return any(cached.get(dataset.names[index]) != record for index, record in gathered.items())

