"""CPU and memory of process trees (deployments/runtimes/local/observe.py: Usage), read from real
processes, also by several threads at once (the runtime is one per process)."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from deployments.runtimes.local.observe import Usage

BUSY = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'while True: pass']); import time; time.sleep(600)"


@pytest.fixture
def busy_and_idle():
    """A process whose child spins, and one that sleeps."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    time.sleep(0.5)  # the busy one has started its child
    yield busy.pid, idle.pid
    for p in (busy, idle):
        for child in psutil.Process(p.pid).children(recursive=True):
            child.kill()
        p.kill()
        p.wait()


def test_a_tree_counts_its_children_and_the_first_look_says_zero(busy_and_idle) -> None:
    busy, idle = busy_and_idle
    usage = Usage()
    first = usage.read([busy, idle])
    assert first.of(busy)[0] == 0.0 and first.of(busy)[1] > 0  # nothing to compare with yet; memory is known
    time.sleep(0.5)
    second = usage.read([busy, idle])
    assert second.of(busy)[0] > 20, second.of(busy)  # the spinning child is under the busy one
    assert second.of(idle)[0] < 10, second.of(idle)
    assert second.of(999_999_999) == (None, None)
    time.sleep(0.5)
    whole = usage.read()  # the whole table: the trees' processes were seen by the looks before
    assert whole.of(busy)[0] > 20 and whole.of(idle)[0] < 10


def test_looks_from_several_threads_each_keep_their_own_figures(busy_and_idle) -> None:
    busy, idle = busy_and_idle
    usage = Usage()
    usage.read([busy, idle])

    def look(root: int) -> list[float]:
        figures = []
        for _ in range(40):
            reading = usage.read([root])
            figures.append(reading.of(root)[0])
            time.sleep(0.01)
        return figures

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(look, [busy, idle] * 4))
    busy_figures = [f for i, r in enumerate(results) if i % 2 == 0 for f in r]
    idle_figures = [f for i, r in enumerate(results) if i % 2 == 1 for f in r]
    assert max(idle_figures) < 50, max(idle_figures)
    # the busy process's share of a core depends on the machine's load (CI runs tests side by side):
    # well above the idle one's, whatever the load
    busy_median, idle_median = sorted(busy_figures)[len(busy_figures) // 2], sorted(idle_figures)[len(idle_figures) // 2]
    assert busy_median > 5 and busy_median > 4 * idle_median, (sorted(busy_figures), sorted(idle_figures))
