"""compiler/runtime/threads.py: kernels run on every physical core, in models and in tuning's measurements.

TVM's own default on x86-64 is half the logical CPUs (it assumes hyper-threads): one thread on a
2-vCPU VM. The checks run in fresh processes, because TVM reads TVM_NUM_THREADS once.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compiler.runtime.threads import ENV, physical_cores

_REPORT_THREADS = "import tvm; print(tvm.get_global_func('runtime.NumThreads')())"


def _threads_after(setup: str, env_threads: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_threads is not None:
        env[ENV] = env_threads
    result = subprocess.run([sys.executable, "-c", f"{setup}\n{_REPORT_THREADS}"], env=env, capture_output=True,
                            text=True, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.parametrize("env_threads, expected", [(None, physical_cores()), ("1", 1)])
def test_local_models_run_on_every_physical_core_unless_told(compiled, env_threads, expected):
    artifact = compiled("digits", "onnx", "host")
    setup = f"from compiler.runtime import LocalModel; LocalModel({str(artifact)!r})"
    assert _threads_after(setup, env_threads) == expected


def test_tuning_measures_candidates_on_every_physical_core(tmp_path):
    """The worker process that times candidates for MetaSchedule inherits the setting."""
    setup = ("import os, tvm\n"
             "from compiler.tuning.search import TuneOptions, _runner\n"
             "from targets import resolve_target\n"
             "runner = _runner(TuneOptions(resolve_target('host')))\n"
             "future = runner.pool.submit(lambda: tvm.get_global_func('runtime.NumThreads')())\n"
             "print(future.result()); runner.pool.shutdown()\n"
             "raise SystemExit(0)")
    result = subprocess.run([sys.executable, "-c", setup], env={k: v for k, v in os.environ.items() if k != ENV},
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert int(result.stdout.split()[-1]) == physical_cores()
