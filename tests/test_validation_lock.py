"""Two studies from one checkout: a second Snakemake run on results that another run is writing is refused at
start-up (issue #22). Snakemake's own lock is not enough: its cleanup removes the whole .snakemake/locks folder
when any run ends. No test here runs a job: the Snakemake invocations ask for a target no rule makes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dpmedgen import config as config_module
from dpmedgen.config import LOCK_NAME, ConfigError, hold_results_lock

ROOT = Path(__file__).resolve().parents[1]


def _holder(results: Path) -> subprocess.Popen:
    """Another process holding the results lock until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from dpmedgen.config import hold_results_lock
        hold_results_lock({{"results_dir": {str(results)!r}}}, force=True)
        print("locked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.fixture
def own_locks():
    """Locks this test process takes are dropped afterwards (they would last as long as the process)."""
    yield
    for handle in config_module._RESULTS_LOCKS.values():
        handle.close()
    config_module._RESULTS_LOCKS.clear()


def test_a_second_process_is_refused_naming_the_holder(tmp_path, own_locks):
    results = tmp_path / "results"
    holder = _holder(results)
    try:
        with pytest.raises(ConfigError, match=rf"config key results_dir: .* is in use by another Snakemake run \(pid {holder.pid} "):
            hold_results_lock({"results_dir": str(results)}, force=True)
    finally:
        _release(holder)
    assert hold_results_lock({"results_dir": str(results)}, force=True) == results.resolve() / LOCK_NAME
    assert hold_results_lock({"results_dir": str(results)}, force=True) == results.resolve() / LOCK_NAME  # re-entrant


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(ROOT / "configs" / "ci.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_snakemake_refuses_a_second_run_on_busy_results_but_plans(tmp_path):
    results_dir = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())["results_dir"]
    work = tmp_path / "work"
    work.mkdir()
    target = f"{results_dir}/no_rule_makes_this.txt"  # whatever happens, no job can run
    holder = _holder(work / results_dir)
    try:
        busy = _snakemake(work, "--cores", "1", target)
        dry = _snakemake(work, "-n", "--quiet", "rules", "--", target)
    finally:
        _release(holder)
    assert busy.returncode != 0 and "is in use by another Snakemake run" in busy.stdout + busy.stderr, busy.stderr[-2000:]
    assert "is in use" not in dry.stdout + dry.stderr  # a dry run neither takes nor waits for the lock
    free = _snakemake(work, "--cores", "1", target)
    assert free.returncode != 0 and "is in use" not in free.stdout + free.stderr
    assert "no_rule_makes_this.txt" in free.stdout + free.stderr  # it got past the lock, to the missing rule
