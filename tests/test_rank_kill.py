"""A rank killed under `accelerate launch` (2 CPU processes): the survivor exits at once with one line naming
the rank that died, the run directory stays resumable, and the resumed 2-process run equals the uninterrupted
one. (benchmarks/rank_kill.py kills at random points and several seeds; this is the fixed-point version.)"""

import time

import pytest

from test_distributed import launch, write_config
from tiny import assert_same_metrics, rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(ddp_run_saved_every_step):
    """The uninterrupted 2-process run both kills are compared with (read only; conftest.py: shared with test_integrity)."""
    return ddp_run_saved_every_step


@pytest.mark.parametrize("fault,dead,survivor", [("kill_in_update:3@1", 1, 0), ("kill_in_checkpoint:2@0", 0, 1)])
def test_a_killed_rank_stops_the_other_with_one_line_and_resumes(tiny_world, reference, tmp_path, fault, dead, survivor):
    config = write_config(tiny_world, tmp_path / "config.yaml", tmp_path / "run")
    t0 = time.monotonic()
    killed = launch("--config", str(config), "--train.save_every", "1", "--train.collective_timeout_s", "120", fault=fault)
    assert time.monotonic() - t0 < 300
    assert killed.returncode == 1  # torchrun's exit status when a worker fails
    ours = [line for line in killed.stderr.splitlines() if line.startswith("policyshift train:")]
    assert len(ours) == 1, killed.stderr[-3000:]
    assert f"error: rank {dead} (pid " in ours[0] and f"rank {survivor} stops too" in ours[0] and "--resume" in ours[0], ours[0]
    resumed = launch("--resume", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_metrics(rows(reference / "metrics.jsonl"), rows(tmp_path / "run" / "metrics.jsonl"))
