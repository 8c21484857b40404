"""The pieces of the several-process failure path that need no launcher (tests/test_rank_kill.py and
benchmarks/rank_kill.py run the real thing): which rank died, the launcher's repeated SIGTERM, faults per rank,
the collective timeout setting."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch.distributed as dist

from policyshift.config import ConfigError, PPOConfig
from policyshift.distributed import lost_peer_message
from policyshift.faults import fault_point
from policyshift.trainer import stop_on_signals


def group_with(*pids, rank=0):
    import socket

    return SimpleNamespace(world_size=len(pids), rank=rank, members=[(pid, socket.gethostname()) for pid in pids])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is gone
    return proc.pid


def test_the_dead_rank_is_named():
    group = group_with(os.getpid(), dead_pid())
    message = lost_peer_message(group, dist.DistBackendError("[../gloo/transport/tcp/pair.cc] Connection closed by peer"), 600, wait_s=0)
    assert message.startswith(f"rank 1 (pid {group.members[1][0]}) of 2 stopped") and "rank 0 stops too" in message


def test_a_zombie_counts_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    import time

    deadline = time.monotonic() + 30
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)  # exited, not yet reaped: what a launcher's child is for a moment
    group = group_with(os.getpid(), proc.pid)
    assert "rank 1" in lost_peer_message(group, RuntimeError("Connection reset by peer"), 600, wait_s=0)
    proc.wait()


def test_a_timeout_with_everyone_alive_says_so_and_other_errors_are_not_peer_failures():
    group = group_with(os.getpid(), os.getppid())
    assert "collective_timeout_s = 60 s" in lost_peer_message(group, dist.DistBackendError("Timed out waiting 60000ms"), 60, wait_s=0)
    assert lost_peer_message(group, ValueError("bad value"), 60, wait_s=0) is None
    assert lost_peer_message(group_with(os.getpid()), dist.DistBackendError("x"), 60, wait_s=0) is None  # one process: no peers


def test_the_launchers_repeated_sigterm_does_not_kill_a_process_of_several():
    trainer = SimpleNamespace(group=SimpleNamespace(world_size=2), stop_signal=None)
    with stop_on_signals(trainer):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's second close: ignored
    assert trainer.stop_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after


def test_a_fault_fires_in_its_rank_only(monkeypatch):
    monkeypatch.setenv("POLICYSHIFT_FAULT", "disk_full_in_metrics:3@1")
    monkeypatch.setenv("RANK", "0")
    fault_point("disk_full_in_metrics", 3)  # another rank's fault: nothing
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(OSError, match="No space left"):
        fault_point("disk_full_in_metrics", 3)


def test_collective_timeout_is_a_positive_number_of_seconds():
    assert PPOConfig().train.collective_timeout_s == 600.0
    for bad in (0, -1, float("inf"), "soon"):
        with pytest.raises(ConfigError, match="train.collective_timeout_s"):
            PPOConfig.from_dict({"train": {"collective_timeout_s": bad}})
