"""How many threads TVM's kernels run on here: one per physical core edgec may use.

Without TVM_NUM_THREADS, TVM's runtime takes half of the logical CPUs on x86-64, assuming two
hyper-threads per core. On a VM whose vCPUs are whole cores (this project's 2-vCPU machines) that
is one thread: kernels tuned and timed that way ran at half speed. edgec sets TVM_NUM_THREADS, unless
the user did, before TVM's thread pool starts (it reads the variable once, at its first parallel
kernel): in the CLI, in `LocalModel`, and for the processes that measure tuning candidates.
"""

from __future__ import annotations

import os

ENV = "TVM_NUM_THREADS"


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (all of them where psutil cannot tell)."""
    import psutil

    usable = len(os.sched_getaffinity(0))
    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(usable, physical))


def configure_threads() -> None:
    """Set TVM_NUM_THREADS to `physical_cores()` unless it is set already."""
    os.environ.setdefault(ENV, str(physical_cores()))
