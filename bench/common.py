"Helpers shared by the benchmarks: machine header, timing, peak-memory measurement, markdown tables."
import ctypes, datetime, os, platform, re, signal, time
from contextlib import contextmanager
from pathlib import Path
import torch

def cpu_model()->str:
    "CPU model name from /proc/cpuinfo (falls back to `platform.processor()`)"
    try: m = re.search(r'^model name\s*:\s*(.+)$', open('/proc/cpuinfo').read(), re.M)
    except OSError: m = None
    return m.group(1).strip() if m else (platform.processor() or 'unknown CPU')

def machine_line()->str:
    "One markdown line naming the machine, the software and the date"
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}; "
            f"date: {datetime.datetime.now():%Y-%m-%d %H:%M}; load average at start: {os.getloadavg()[0]:.2f}")

def code_version(pkg='lsuv_fastai')->str:
    "`pkg` version and the git commit of its source, marked when its files have uncommitted changes"
    import importlib, subprocess
    mod = importlib.import_module(pkg)
    src = Path(mod.__file__).parent
    git = lambda *a: subprocess.run(['git', '-C', str(src), *a], capture_output=True, text=True).stdout.strip()
    commit, dirty = git('rev-parse', '--short', 'HEAD'), git('status', '--porcelain', '--', '.')
    at = f" at commit {commit}" + (' + uncommitted changes' if dirty else '') if commit else ''
    return f"{pkg} {getattr(mod, '__version__', '?')}{at}"

def md_table(headers, rows)->str:
    "Markdown table from a header list and rows of already-formatted cells"
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|'*len(headers)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows])

# Peak memory: the kernel's high-water mark of this process's resident set (VmHWM), reset before each call by writing 5
# to /proc/self/clear_refs, minus the resident size just before the call. glibc keeps freed blocks (up to 32 MB) cached
# and resident, which would hide part of a call's peak: so big blocks are served by mmap (returned to the OS on free)
# and the cache is trimmed before every measured call.
def _status_kb(key):
    return int(re.search(rf'^{key}:\s+(\d+) kB', open('/proc/self/status').read(), re.M).group(1))

def _libc():
    try: return ctypes.CDLL('libc.so.6')
    except OSError: return None

def release_freed_memory():
    "Make glibc hand big freed blocks back to the OS at once (fixed thresholds); slows allocation: call it after timing"
    if (libc := _libc()): libc.mallopt(-3, 64*1024); libc.mallopt(-1, 128*1024)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

def can_measure_memory()->bool:
    try: open('/proc/self/clear_refs', 'w').write('5'); _status_kb('VmHWM'); return True
    except (OSError, AttributeError): return False

def timed_call(fn, memory=False):
    "(seconds, peak resident memory above the level just before the call in MB, or None) of `fn()`"
    if memory:
        if (libc := _libc()): libc.malloc_trim(0)
        open('/proc/self/clear_refs', 'w').write('5')
        rss0 = _status_kb('VmRSS')
    t = time.perf_counter()
    fn()
    secs = time.perf_counter() - t
    return secs, ((_status_kb('VmHWM') - rss0) / 1024 if memory else None)

class TimeLimit(Exception): pass

@contextmanager
def time_limit(secs):
    "Raise `TimeLimit` in the main thread if the block runs longer than `secs` (SIGALRM; 0 disables)"
    def handler(*_): raise TimeLimit()
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, secs)
    try: yield
    finally: signal.setitimer(signal.ITIMER_REAL, 0); signal.signal(signal.SIGALRM, old)
