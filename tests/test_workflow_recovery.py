"""Runs that fail or are cut off: README's command after a killed run, and a job that fails on SLURM (they do
not need tests/test_workflow.py's CI study)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import ROOT, SLURM_PROFILE, SNAKEMAKE, require_slurm, run_snakemake


@pytest.mark.integration
def test_readme_command_works_after_an_interrupted_run(tmp_path):
    """Snakemake killed while a training job runs leaves that job's outputs marked incomplete; README's command,
    run again as written (no extra flag), reruns the job instead of stopping with IncompleteFilesException
    (profiles/default sets rerun-incomplete)."""
    import signal
    import time

    target = "results-ci/brain_phantom/runs/dcgan/none/epsinf/seed0/checkpoint.pt"
    started = tmp_path / "results-ci" / "brain_phantom" / "runs" / "dcgan" / "none" / "epsinf" / "seed0" / "progress"
    cmd = SNAKEMAKE + ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                       "--configfile", str(ROOT / "configs" / "ci.yaml"), "--cores", "1", target]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 600
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, as a lost terminal or node would
        proc.wait()
    assert started.exists(), (tmp_path / "first.log").read_text()[-3000:]
    assert not (tmp_path / target).exists()
    again = run_snakemake(tmp_path, "--cores", "1", target)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "IncompleteFilesException" not in again.stderr and (tmp_path / target).exists()


@pytest.mark.integration
def test_a_failing_slurm_job_fails_the_workflow(tmp_path):
    """A job that fails on the cluster ends the workflow with an error (after its retries), not a hang."""
    require_slurm()
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text('rule all:\n    output: "never.txt"\n    shell: "echo doomed >&2; exit 3"\n')
    cmd = SNAKEMAKE + ["--snakefile", str(snakefile), "--directory", str(tmp_path), *SLURM_PROFILE, "--retries", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert len(re.findall(r"submitted with SLURM jobid", out)) == 2, out[-3000:]  # the job and its one retry
    assert "Error in rule all" in out and not (tmp_path / "never.txt").exists()
