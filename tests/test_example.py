"""Verifies that the README's planner/researcher example works against the real broker:
subtasks published on a channel reach researchers on both shards and every finding comes
straight back to the planner as a direct message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import DEFAULT_CONFIG, KEY_ID, SECRET, Broker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "planner_researcher.py"


def test_planner_researcher_example() -> None:
    b = Broker(DEFAULT_CONFIG)
    try:
        out = subprocess.run(
            [sys.executable, str(EXAMPLE), "--url", f"ws://127.0.0.1:{b.port}/v1",
             "--key-id", KEY_ID, "--key-secret", SECRET, "--researchers", "4", "--subtasks", "12"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        b.stop()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "all 12 findings received", out.stdout
    found = sorted(int(l.split()[3]) for l in lines if l.startswith("finding for subtask"))
    assert found == list(range(12)), out.stdout
    # Each subtask i was answered by the researcher it was assigned to (i mod 4).
    for l in lines[:-1]:
        i, who = int(l.split()[3]), l.split()[5].rstrip(":")
        assert who == f"researcher-{i % 4}", l
