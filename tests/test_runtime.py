"""Each job uses exactly its Snakemake threads, and a local run never starts more threads than cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_start_job_limits_every_thread_pool(tmp_path):
    """In a fresh process (as a Snakemake script job): torch's intra-op pool and numpy's BLAS follow
    `threads`, whichever is imported first, and so does a child process."""
    code = f"""
import json, subprocess, sys
import numpy
from dpmedgen.runtime import start_job
start_job({str(tmp_path / "job.log")!r}, 1)
import torch
from threadpoolctl import threadpool_info
cmd = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
child = subprocess.run(cmd, capture_output=True, text=True)
print(json.dumps({{"torch": torch.get_num_threads(), "blas": [p["num_threads"] for p in threadpool_info()],
                  "child": int(child.stdout)}}), file=sys.__stdout__)
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == 1 and got["child"] == 1
    assert got["blas"] and set(got["blas"]) == {1}


def test_local_cores_are_capped_at_the_machine(tmp_path):
    cores = len(os.sched_getaffinity(0))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(ROOT / "configs" / "ci.yaml"),
        "--cores",
        str(cores + 6),
        "-n",
        "all",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"--cores {cores + 6} on a machine with {cores} cores: running at most {cores} at once"
        in proc.stderr + proc.stdout
    )


def test_compile_package_writes_bytecode_even_where_python_would_not(tmp_path):
    """With PYTHONDONTWRITEBYTECODE set, imports never write bytecode; compile_package does, and it is current
    (a later import in such a process reads it instead of compiling the source)."""
    import importlib.util

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    (package / "sub" / "mod.py").write_text("Y = 2\n")
    code = f"import sys; from dpmedgen.runtime import compile_package; sys.exit(0 if compile_package({str(package)!r}) else 1)"
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    for source in (package / "__init__.py", package / "sub" / "mod.py"):
        assert Path(importlib.util.cache_from_source(str(source))).is_file(), source
    # and it says when it cannot
    (package / "broken.py").write_text("def (\n")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 1
