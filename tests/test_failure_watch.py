"""The failure watch of a run of several processes (utils/failure_watch.py), in one process: a
peer's report, a lost store and a stop signal the main thread cannot honour each end the process
with one line and its status; a run that ends by itself first is left alone."""
import datetime
import os
import signal
import time

import pytest
import torch.distributed as dist

from utils.failure_watch import FAILURE_KEY, FailureWatch


def free_store():
    return dist.TCPStore('127.0.0.1', 0, is_master=True, timeout=datetime.timedelta(seconds=5),
                         wait_for_workers=False)


def watch_with(store, **settings):
    exits = []
    settings = dict(dict(poll=0.05, grace=0.2, stop_grace=0.3), **settings)
    watch = FailureWatch(store, rank=0, exit=exits.append, **settings).start()
    return watch, exits


def wait_for(condition, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not condition():
        time.sleep(0.02)
    return condition()


def test_a_peers_report_ends_this_process_with_its_message(capsys):
    store = free_store()
    watch, exits = watch_with(store)
    store.set(FAILURE_KEY, 'rank 3: out of memory: CUDA out of memory.')
    assert wait_for(lambda: exits)
    assert exits == [5]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ['error: another process failed (rank 3: out of memory: CUDA out of memory.); '
                     'this one stops too']
    watch.close()


def test_a_run_that_ends_by_itself_within_the_grace_is_left_alone():
    store = free_store()
    watch, exits = watch_with(store, grace=1.0)
    store.set(FAILURE_KEY, 'rank 1: the same error every rank agreed on')
    time.sleep(0.2)
    watch.close()      # this process's main thread ends the run with its own message
    time.sleep(1.2)
    assert exits == []


def test_the_first_report_wins():
    store = free_store()
    first = FailureWatch(store, rank=1, exit=lambda status: None)
    second = FailureWatch(store, rank=2, exit=lambda status: None)
    first.report('out of memory')
    second.report('lost contact')
    assert store.get(FAILURE_KEY).decode() == 'rank 1: out of memory'


def test_a_lost_store_is_a_lost_process(capsys):
    host = free_store()
    client = dist.TCPStore('127.0.0.1', host.port, is_master=False, timeout=datetime.timedelta(seconds=2))
    watch, exits = watch_with(client)
    del host   # the process that hosted the store is gone
    assert wait_for(lambda: exits, seconds=10)
    assert exits == [5] and 'rendezvous store stopped answering' in capsys.readouterr().err
    watch.close()


def test_a_stop_signal_the_main_thread_cannot_honour_ends_the_process(capsys):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: received.append(number))
    try:
        watch, exits = watch_with(free_store())
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: exits)
    finally:
        watch.close()
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM] and exits == [130]
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith('stopped: SIGTERM while this process waited')


def test_a_stop_the_main_thread_honours_in_time_is_left_alone():
    previous = signal.signal(signal.SIGTERM, lambda number, frame: None)
    try:
        watch, exits = watch_with(free_store(), stop_grace=1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        watch.close()   # the main thread saved its state and is exiting 130 itself
        time.sleep(1.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exits == []
