"""``spanmetrics dev`` end to end: broker, Redis, two worker processes, load, the live table, clean exit.

The dev command is run as a real subprocess with stdout redirected (not a TTY), the way a user
would script it. While it runs, the test records every descendant process (broker, Valkey,
workers) by pid *and* start time, so afterwards it can tell whether any of exactly those processes
survived - without confusing them with servers other tests may be running, or with a reused pid.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.loadgen.model import build_model

pytestmark = pytest.mark.timeout(240)

DURATION = 25
#: Start-up, 25 s of load, then up to ~30 s for the workers' graceful stop, with margin.
DEADLINE = 180

try:
    import psutil as _psutil
except ImportError:  # psutil is optional; /proc is enough on Linux
    _psutil = None


def _identity(pid: int) -> tuple[float, str] | None:
    """(start time, name) of a live process, or None if it is gone; stable across pid reuse."""
    if _psutil is not None:
        try:
            proc = _psutil.Process(pid)
            if proc.status() == _psutil.STATUS_ZOMBIE:
                return None
            return proc.create_time(), proc.name()
        except _psutil.NoSuchProcess:
            return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; it only waits to be reaped
        return None
    return float(fields[19]), name


def _descendants(root: int) -> dict[int, tuple[float, str]]:
    """Every live descendant of *root* with its identity."""
    if _psutil is not None:
        found: dict[int, tuple[float, str]] = {}
        with contextlib.suppress(_psutil.NoSuchProcess):
            for child in _psutil.Process(root).children(recursive=True):
                ident = _identity(child.pid)
                if ident is not None:
                    found[child.pid] = ident
        return found
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found = {}
    stack = [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            ident = _identity(pid)
            if ident is not None:
                found[pid] = ident
                stack.append(pid)
    return found


@pytest.mark.skipif(
    _psutil is None and not Path("/proc/self/stat").exists(), reason="needs psutil or /proc for processes"
)
def test_dev_runs_the_whole_stack_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "worker", "dev", "--duration", str(DURATION), "--workers", "2"]
    seen: dict[int, tuple[float, str]] = {}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + DEADLINE
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"spanmetrics dev still running after {DEADLINE}s"
                seen.update(_descendants(proc.pid))
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    context = f"\n--- stdout (tail) ---\n{stdout[-6000:]}\n--- stderr ---\n{stderr[-6000:]}"

    assert proc.returncode == 0, f"spanmetrics dev exited with {proc.returncode}{context}"

    # It printed where things are.
    for label in ("kafka ", "redis ", "config ", "log dir "):
        assert f"spanmetrics dev: {label}" in stdout, f"missing {label!r} line{context}"

    # The table names the model's services, most of them with traffic by the end.
    services = set(build_model(services=6).service_names)
    listed: set[str] = set()
    busy: set[str] = set()
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 8 and cells[0] in services:
            listed.add(cells[0])
            if cells[3] != "-" and float(cells[3]) > 0:
                busy.add(cells[0])
    assert listed == services, f"services in the table: {sorted(listed)}{context}"
    assert "frontend" in busy and len(busy) >= 4, f"services with a non-zero rate: {sorted(busy)}{context}"

    # Both workers ran as child processes, and nothing it started is still alive.
    workers = [pid for pid, (_, name) in seen.items() if name.startswith("python")]
    assert len(workers) >= 2, f"expected two worker processes among {seen}{context}"
    survivors = {pid: ident for pid, ident in seen.items() if _identity(pid) == ident}
    assert not survivors, f"processes left behind: {survivors}{context}"
