"""One run of a stage per workspace: a second one stops at once naming the holder; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.locks import StageBusy, lock_path, stage_lock

PIE = str(Path(sys.executable).with_name("pie"))


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    with stage_lock(tmp_path, "rules"):
        with pytest.raises(StageBusy, match=rf"another `pie rules` is running .*pid {os.getpid()} "):
            with stage_lock(tmp_path, "rules"):
                pass
        with stage_lock(tmp_path, "degrade"):  # other stages are free
            pass
    with stage_lock(tmp_path, "rules"):  # released
        pass


@pytest.mark.parametrize("command", [["rules", "--fivek", "fivek"], ["degrade"], ["shard"]])
def test_the_cli_refuses_a_busy_stage_in_one_line(tmp_path, command):
    stage = command[0]
    (tmp_path / "fivek").mkdir()
    Image.new("RGB", (40, 30), (90, 120, 150)).save(tmp_path / "fivek" / "a0001.png")
    with stage_lock(tmp_path, stage):
        result = subprocess.run([PIE, "--root", str(tmp_path), *command], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {tmp_path}: another `pie {stage}` is running on this workspace "
                           f"(pid {os.getpid()} on ")
    assert line.endswith("; wait for it or stop it")


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipeline.locks import stage_lock\n"
        f"with stage_lock({str(tmp_path)!r}, 'crawl'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StageBusy, match=f"pid {holder.pid} "):
        with stage_lock(tmp_path, "crawl"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with stage_lock(tmp_path, "crawl"):
        assert str(os.getpid()) in lock_path(tmp_path, "crawl").read_text()
