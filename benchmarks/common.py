"""What the benchmark scripts share: the repository on sys.path, process measurements, the machine
description, the table layout, and running each measurement in a fresh Python process (or in
several started together, e.g. the ranks of a process group).

The scripts are run as files (`python benchmarks/bench_x.py`, from any directory), so Python puts
benchmarks/ first on sys.path and `import common` finds this module; importing it puts the
repository root on sys.path, so the project's modules import after it.
"""
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

import torch  # noqa: E402

RESULT_MARK = 'BENCH-RESULT '


def max_rss_mb():
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == 'darwin' else 2 ** 10)


def status_mb(field):
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss():
    """Reset the process's peak RSS (VmHWM) to its current RSS, so that the peak of one phase can
    be read on its own (Linux: /proc/self/clear_refs)."""
    Path('/proc/self/clear_refs').write_text('5')


def phase_peak_mb():
    """Peak RSS since the last reset_peak_rss (VmHWM), in MB."""
    return status_mb('VmHWM')


def current_rss_mb():
    return status_mb('VmRSS')


def cpu_seconds():
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def cpu_name():
    """The CPU model as /proc/cpuinfo names it (Linux), else platform's guess."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_text(threads, device):
    """The `machine:` line: CPU, GPU on CUDA, Python, torch, threads and device."""
    gpu = ''
    if torch.device(device).type == 'cuda':
        gpu = f', GPU {torch.cuda.get_device_name(torch.device(device))}'
    return (f'machine: {cpu_name()} ({platform.machine()}), {os.cpu_count()} CPU(s){gpu}, python '
            f'{platform.python_version()}, torch {torch.__version__}, {threads} thread(s), '
            f'device {device}')


def load_text():
    """The 1-minute load average against the CPU count: above the count, other jobs compete."""
    try:
        return f'{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)'
    except OSError:
        return 'unknown'


def contention_warning(threads):
    """A line of advice when other jobs already keep the CPUs busy, else None.

    Seen on a shared 2-core machine: with 2 threads and another job on one core, every parallel
    region waits for the preempted thread and a step took up to 7x longer than with 1 thread.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cpus = os.cpu_count() or 1
    if load + threads <= cpus + 0.9:
        return None
    advice = '; --threads 1 is steadier on a busy machine' if threads > 1 else ''
    return (f'warning: load average {load:.2f} on {cpus} CPU(s): other jobs compete with these '
            f'{threads} thread(s), so the timings are only indicative{advice}')


def print_load_at_start(threads, device):
    """The load average, and on a CPU run the contention warning if there is one."""
    print(f'load average at start: {load_text()}')
    warning = contention_warning(threads) if torch.device(device).type == 'cpu' else None
    if warning:
        print(warning)


def format_table(rows, headers):
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in rows + [headers]) for i in range(len(headers))]

    def line(cells):
        return '  '.join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return '\n'.join([line(headers), '  '.join('-' * w for w in widths)] + [line(r) for r in rows])


def print_result(result):
    """In a measuring process: hand `result` (JSON-ready) back to run_in_child."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_in_child(script, name, arguments):
    """Run `script` with `arguments` in a fresh Python process and return what it print_result-ed.

    The child runs from the repository root with tqdm off; `name` labels a failure, which shows
    the child's output and exits.
    """
    return run_in_children(script, name, arguments, [{}])[0]


def run_in_children(script, name, arguments, environments):
    """Start one fresh Python process per entry of `environments` (variables added to this
    process's environment), all at once, wait for all of them, and return what each one
    print_result-ed (None for a process that printed nothing; the first one must print).

    As run_in_child otherwise. When a process fails, the others are ended (they may be waiting
    for it in a collective) and the failed one's output is shown.
    """
    command = [sys.executable, str(Path(script).resolve()), *arguments]
    outputs = [tempfile.TemporaryFile('w+') for _ in environments]
    processes = [subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True,
                                  env=dict(os.environ, TQDM_DISABLE='1', **extra), cwd=str(REPO_DIR))
                 for output, extra in zip(outputs, environments)]
    failed = None
    try:
        while failed is None and any(process.poll() is None for process in processes):
            failed = next((p for p in processes if p.poll() not in (None, 0)), None)
            time.sleep(0.05)
        failed = failed or next((p for p in processes if p.returncode != 0), None)
    finally:   # also on Ctrl-C: no measuring process outlives this one
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait()
    texts = []
    for output in outputs:
        output.seek(0)
        texts.append(output.read())
        output.close()
    results = []
    for text in texts:
        lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
        results.append(json.loads(lines[-1][len(RESULT_MARK):]) if lines else None)
    if failed is not None or results[0] is None:
        failed = failed or processes[0]
        sys.stderr.write(texts[processes.index(failed)])
        raise SystemExit(f'{name}: measuring process failed (exit {failed.returncode})')
    return results


def free_port():
    """A TCP port of 127.0.0.1 that is free now (for MASTER_PORT of a local process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]
