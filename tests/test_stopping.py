"""Stopping a run (utils/stopping.py): SIGINT and SIGTERM are requests, acted on at safe points.

The signal handler used to raise an exception wherever the main thread was, inside logging's
lock or a loader starting its workers: runs hung for good, swallowed the stop (exit 0), ended in
a traceback, lost the save to a second Ctrl-C, and under `spawn` every worker printed its own
traceback. Here Ctrl-C is sent as a terminal sends it, to the whole process group, at chosen
moments of start-up, worker start and work in every state, under fork, spawn and forkserver
(set by a sitecustomize on the child's PYTHONPATH: Python has no setting for it); in process,
a signal is sent from inside the fork of a loader worker and from inside a save.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import utils.context
import utils.training
from helpers import MAIN, TINY_FLAGS, run_main
from utils.stopping import StopRequest

SITECUSTOMIZE = '''import multiprocessing, os
multiprocessing.set_start_method({method!r}, force=True)
with open({marker!r}, 'a') as marker:
    marker.write(f'{{os.getpid()}}\\n')
'''
ENDED_WITHIN = 30   # seconds from the signal to the end of the process and of its workers: a hang is forever

STATE_ARGS = {
    0: ['--state', 0, '--continue-from', 'sup.pt'],
    1: ['--state', 1, '--continue-from', 'sup.pt', '--init-epochs', 0, '--iters', 1, '--st-epochs', 20,
        '--val-num-steps', 2],
    2: ['--state', 2, '--init-epochs', 50, '--val-num-steps', 2, '--save-every', 0],
    3: ['--state', 3, '--continue-from', 'sup.pt', '--scales', 0.5, 0.75, 1, 1.25, 1.5, '--flip'],   # seconds of work
}
# id: (start method, state, the child's stdout line to wait for (None: from the start), seconds to
# wait after it, Ctrl-C presses 50 ms apart). The lines come just before a loader starts its
# workers ('checked' ends the data check of state 0's list), or mid-training after a validation.
MOMENTS = {
    'imports': ('fork', 3, None, 1.0, 1),
    'fork-state0-workers-start': ('fork', 0, 'checked', 0, 1),
    'fork-state1-labeling-workers-start': ('fork', 1, 'labeling with', 0, 1),
    'fork-state2-workers-start': ('fork', 2, 'supervised:', 0, 1),
    'fork-state2-mid-training-twice': ('fork', 2, 'supervised step 2/', 0, 2),
    'fork-state3-first-moments': ('fork', 3, 'evaluating', 0, 1),
    'spawn-state0-workers-importing': ('spawn', 0, 'checked', 0.3, 1),
    'spawn-state1-labeling-workers-importing': ('spawn', 1, 'labeling with', 0.5, 1),
    'spawn-state2-mid-training-twice': ('spawn', 2, 'supervised step 2/', 0, 2),
    'spawn-state3-workers-importing': ('spawn', 3, 'evaluating', 0.5, 1),
    'forkserver-state1-labeling-workers-start': ('forkserver', 1, 'labeling with', 0, 1),
}


class Child:
    """main.py in a process group of its own, its output read as it comes."""

    def __init__(self, cwd, args, env):
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, str(MAIN), *map(str, args)], cwd=cwd, env=env,
                                        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.stdout, self.stderr = [], []
        self.readers = [threading.Thread(target=self.read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def read(stream, lines):
        for line in stream:
            lines.append(line)

    def wait_for_line(self, fragment, timeout=180):
        deadline = time.monotonic() + timeout
        while not any(fragment in line for line in self.stdout):
            assert self.process.poll() is None, f'ended before {fragment!r}:\n{self.output()}'
            assert time.monotonic() < deadline, f'no {fragment!r} within {timeout} s:\n{self.output()}'
            time.sleep(0.01)

    def interrupt(self, presses):
        """Ctrl-C as a terminal sends it: SIGINT to the whole process group."""
        assert self.process.poll() is None, f'ended before the signal:\n{self.output()}'
        for press in range(presses):
            if press:
                time.sleep(0.05)
            os.killpg(self.process.pid, signal.SIGINT)

    def wait_for_end(self, timeout):
        """Seconds until the process and every process that shares its output (its workers) ended."""
        signalled = time.monotonic()
        try:
            self.process.wait(timeout)
            for reader in self.readers:
                reader.join(max(timeout - (time.monotonic() - signalled), 0.1))
            hung = any(reader.is_alive() for reader in self.readers)
        except subprocess.TimeoutExpired:
            hung = True
        if hung:
            os.killpg(self.process.pid, signal.SIGKILL)
            pytest.fail(f'still running {timeout} s after the signal:\n{self.output()}')
        return time.monotonic() - signalled

    def output(self):
        return f'stdout:\n{"".join(self.stdout)[-3000:]}\nstderr:\n{"".join(self.stderr)[-3000:]}'


def site_folder(tmp_path, method):
    """A sitecustomize that sets the start method in every Python process of the test's runs,
    and writes each process id to a marker."""
    folder = tmp_path / f'site-{method}'
    folder.mkdir()
    marker = tmp_path / f'started-{method}'
    (folder / 'sitecustomize.py').write_text(SITECUSTOMIZE.format(method=method, marker=str(marker)))
    return folder, marker


@pytest.mark.parametrize('moment', list(MOMENTS))
def test_ctrl_c_at_any_moment_is_one_line_exit_130_and_saves_the_state(synthetic_voc, supervised_checkpoint,
                                                                          tmp_path, moment):
    method, state, line, delay, presses = MOMENTS[moment]
    (tmp_path / 'sup.pt').write_bytes(supervised_checkpoint.read_bytes())
    site, marker = site_folder(tmp_path, method)
    env = dict(os.environ, TQDM_DISABLE='1', PYTHONUNBUFFERED='1', PYTHONPATH=str(site))   # lines as they come
    args = [*STATE_ARGS[state], '--exp-name', 'run', *TINY_FLAGS, '--workers', 2, '--split', 8,
            '--data-root', synthetic_voc]
    child = Child(tmp_path, args, env)
    if line is not None:
        child.wait_for_line(line)
        time.sleep(delay)
    else:
        time.sleep(max(delay - (time.monotonic() - child.started), 0))
    child.interrupt(presses)
    took = child.wait_for_end(ENDED_WITHIN)

    assert child.process.returncode == 130, child.output()
    errors = [text for text in child.stderr if text.strip()]
    assert len(errors) == 1 and errors[0].startswith('stopped: SIGINT'), child.output()
    started = marker.read_text().split()
    assert str(child.process.pid) in started, 'the sitecustomize set the start method in the run itself'
    if method == 'fork':
        assert started == [str(child.process.pid)], 'fork starts no new interpreter'
    elif 'mid-training' in moment:
        assert len(started) > 2, f'{method}: the loader workers are new interpreters'
    if line is not None:
        assert any(text.startswith('stopping (SIGINT)') for text in child.stdout), 'acknowledged at once'
    saved = re.search(r'state saved to (\S+);', errors[0])
    if state in (0, 3) or line is None:
        assert saved is None and 'nothing was saved' in errors[0], errors[0]
        assert not (tmp_path / 'logs' / 'run' / 'results.json').exists()
    else:
        assert saved, errors[0]
        checkpoint = torch.load(tmp_path / saved[1], map_location='cpu', weights_only=True)
        if 'mid-training' in moment:
            assert checkpoint['step'] >= 2, 'the state after the last completed step'
        if state == 1:
            assert checkpoint['step'] == 0 and checkpoint['train_state']['progress']['round'] == 0
    print(f'{moment}: ended {took:.1f} s after the signal')


def test_a_signal_while_loader_workers_start_is_acted_on_not_swallowed(synthetic_voc, supervised_checkpoint,
                                                                      tmp_path):
    """Ctrl-C while a loader forks its workers: the handler raised inside the fork's own
    bookkeeping, where the exception is only printed ("Exception ignored in ..."): the evaluation
    went on and ended with exit 0. Now the stop is acted on at the next batch."""
    (tmp_path / 'sup.pt').write_bytes(supervised_checkpoint.read_bytes())
    armed = []

    def interrupt_once():
        if armed:
            armed.clear()
            os.kill(os.getpid(), signal.SIGINT)

    os.register_at_fork(after_in_parent=interrupt_once)   # cannot be removed: disarmed after use
    armed.append(True)
    try:
        completed = run_main(tmp_path, '--state', 3, '--exp-name', 'run', '--continue-from', 'sup.pt', *TINY_FLAGS,
                             '--workers', 2, '--split', 8, '--data-root', synthetic_voc)
    finally:
        armed.clear()
    errors = [text for text in completed.stderr.splitlines() if text.strip()]
    assert completed.returncode == 130 and len(errors) == 1, completed.stderr[-3000:]
    assert errors[0].startswith('stopped: SIGINT during state 3: nothing was saved'), errors
    assert not (tmp_path / 'logs' / 'run' / 'results.json').exists()


def test_a_second_signal_while_saving_does_not_cost_the_save(synthetic_voc, tmp_path, monkeypatch):
    """Ctrl-C at step 2 saves the state; a second Ctrl-C during that save interrupted it, and the
    run ended with "nothing was saved" (up to --save-every steps lost). Now it is acknowledged
    and the save completes."""
    real_fetch, real_save = utils.training.fetch, utils.context.save_checkpoint
    fetches = []

    def fetch(batches, stop):   # the fetch of step 3's batch is during step 2
        fetches.append(1)
        if len(fetches) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_fetch(batches, stop)

    def save_checkpoint(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(utils.training, 'fetch', fetch)
    monkeypatch.setattr(utils.context, 'save_checkpoint', save_checkpoint)
    completed = run_main(tmp_path, *STATE_ARGS[2], '--exp-name', 'run', *TINY_FLAGS, '--split', 8,
                         '--val-num-steps', 1000, '--data-root', synthetic_voc)
    errors = [text for text in completed.stderr.splitlines() if text.strip()]
    assert completed.returncode == 130 and len(errors) == 1, completed.stderr[-3000:]
    assert 'SIGINT at step 2 of supervised: state saved to logs/run/last.pt' in errors[0], errors
    assert torch.load(tmp_path / 'logs' / 'run' / 'last.pt', weights_only=True)['step'] == 2


def test_signals_are_acknowledged_at_once_and_a_third_outside_a_save_ends_the_process():
    """The handler only records and says: stdout for the acknowledgements (stderr keeps its one
    line), never an exception; during a save further signals are acknowledged only; a third
    signal outside a save ends the process at once with one line, exit 130."""
    written, exits = [], []
    stop = StopRequest(write=lambda descriptor, data: written.append((descriptor, data.decode())),
                       exit=exits.append)
    assert not stop
    stop.request('SIGINT')
    assert stop and stop.signal_name == 'SIGINT' and written[-1][0] == 1
    assert written[-1][1].startswith('stopping (SIGINT): the run ends after the current step or batch')
    with stop.saving():
        stop.request('SIGINT')
        stop.request('SIGTERM')
    assert [descriptor for descriptor, _ in written] == [1, 1, 1] and exits == []
    assert 'saving the state, which no signal interrupts' in written[-1][1]
    stop.request('SIGINT')
    assert exits == [130] and written[-1][0] == 2
    assert written[-1][1].startswith('stopped: SIGINT a third time: ended at once')
    with pytest.raises(Exception, match='SIGINT') as raised:
        stop.check()
    assert raised.value.exit_status == 130


def test_a_third_signal_leaves_run_log_s_ending_line_while_the_run_holds_its_name(tmp_path):
    """The forced exit skips the run's own ending, so run.log had no `ended:` line: it is
    appended by the handler, without a lock, only from when the run began until it ended."""
    from utils.experiment import Experiment

    exits = []
    stop = StopRequest(write=lambda descriptor, data: None, exit=exits.append)
    experiment = Experiment('run', base_dir=tmp_path, stop=stop)
    log = tmp_path / 'logs' / 'run' / 'run.log'
    experiment.start()
    assert stop.run_log is None, 'a run that has not begun (it may yet be refused) writes into no log'
    experiment.begin('main.py --state 2')
    for _ in range(3):
        stop.request('SIGTERM')
    assert exits == [130]
    last = log.read_text().splitlines()[-1].split(' ', 2)[2]
    assert last.startswith('ended: stopped (exit 130): SIGTERM a third time: ended at once'), last
    experiment.end()
    lines = log.read_text().splitlines()
    assert stop.run_log is None and lines[-1].endswith('ended: finished') and len(lines) == 3
    stop.request('SIGTERM')   # after the run let go of its name: nothing more in its log
    assert log.read_text().splitlines() == lines


def test_an_error_while_a_loader_fetches_once_a_stop_is_requested_is_the_stop():
    stop = StopRequest(write=lambda descriptor, data: None)

    def batches():
        yield 1
        stop.request('SIGTERM')
        raise RuntimeError('DataLoader worker (pid 1) exited unexpectedly')

    seen = []
    with pytest.raises(Exception) as raised:
        for item in stop.until_stopped(batches()):
            seen.append(item)
    assert seen == [1] and type(raised.value).__name__ == 'StopRequested'
    assert raised.value.signal_name == 'SIGTERM'


MASK_OF_SPAWNED_WORKERS = '''import os, signal, sys
sys.path.insert(0, {repo!r})
import torch
from utils.training import Loader

class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return index

loader = Loader(Items(), batch_size=1, num_workers=2, multiprocessing_context='spawn')
iterator = iter(loader)   # the first loader of this process: multiprocessing's resource tracker starts now
workers = [pid for pid in open(f'/proc/self/task/{{os.getpid()}}/children').read().split()
           if b'spawn_main' in open(f'/proc/{{pid}}/cmdline', 'rb').read()]   # not the resource tracker
for pid in workers:
    blocked = next(int(line.split()[1], 16) for line in open(f'/proc/{{pid}}/status') if line.startswith('SigBlk'))
    print(pid, bool(blocked & (1 << signal.SIGINT - 1)), bool(blocked & (1 << signal.SIGTERM - 1)), flush=True)
for pid in workers:
    os.kill(int(pid), signal.SIGKILL)
os._exit(0)
'''


@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='reads the workers\' signal masks from /proc')
def test_spawned_loader_workers_start_with_the_stop_signals_blocked():
    """A new interpreter takes seconds to import torch, and Ctrl-C meanwhile printed its traceback.
    The workers start with SIGINT and SIGTERM blocked, also when the loader is the first thing to
    start multiprocessing's resource tracker, whose start unblocks both in the main process."""
    completed = subprocess.run([sys.executable, '-c', MASK_OF_SPAWNED_WORKERS.format(repo=str(MAIN.parent))],
                               capture_output=True, text=True, timeout=120)
    lines = completed.stdout.split('\n')[:-1]
    assert len(lines) == 2 and all(line.endswith(' True True') for line in lines), completed.stdout + completed.stderr
