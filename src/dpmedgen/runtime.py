"""Process settings of a pipeline job: its log, its thread budget, and how the allocator keeps memory.

Every workflow script starts with `start_job(snakemake.log[0], snakemake.threads)`, before it imports the
numerical libraries, so that the job uses exactly its Snakemake `threads`: OpenMP / BLAS thread pools read
their size from the environment when they load (numpy, scipy, torch; torch's intra-op pool
too), and pools already loaded are resized with threadpoolctl. Snakemake's `--cores` bounds the sum of the running
jobs' threads (and `rules/common.smk` caps a local run's `--cores` at the machine's cores), so jobs never
oversubscribe the machine.
"""

from __future__ import annotations

import ctypes
import os
import sys

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def limit_threads(threads: int) -> None:
    """Use `threads` threads in every thread pool of this process (and of the processes it starts)."""
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules or "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)  # pools already loaded (the environment is read only at load time)
    if "torch" in sys.modules:  # otherwise torch sizes its pool from OMP_NUM_THREADS when it loads
        import torch

        torch.set_num_threads(threads)


def retain_freed_memory() -> None:
    """Keep freed memory in the process instead of returning it to the OS (glibc only; a no-op elsewhere).

    glibc serves allocations above 128 KiB by mmap and unmaps them when freed, so a training step that
    allocates the same large activations every time page-faults all of them in again: on the 2-core test
    machine that was a third of an unfolded convolution's cost. Raising the mmap and trim thresholds makes
    glibc reuse the freed blocks. Both the private and the non-private path run with it.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 512 * 2**20)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def compile_package(package_dir: str | os.PathLike | None = None) -> bool:
    """Write the bytecode of dpmedgen's own modules (`compileall`), once per workflow invocation, so that the
    ~200 jobs of a study do not each compile them from source again: an editable install (`pip install -e`) has
    none, and where PYTHONDONTWRITEBYTECODE is set (common in containers and CI) Python never writes it, which
    cost ~0.5 s of CPU per job on a 2-core machine. Up-to-date files are only checked; a read-only install is
    left as it is. True when every module has current bytecode. `package_dir`: another package's directory.
    """
    import compileall

    if package_dir is None:
        import dpmedgen

        package_dir = os.path.dirname(dpmedgen.__file__)
    try:
        return bool(compileall.compile_dir(os.fspath(package_dir), quiet=2))
    except OSError:
        return False


def start_job(log_path: str | os.PathLike, threads: int) -> None:
    """Send the job's output to its log, limit it to `threads` threads and keep freed memory."""
    from dpmedgen.logs import setup_rule_log

    setup_rule_log(log_path)
    retain_freed_memory()
    limit_threads(threads)
