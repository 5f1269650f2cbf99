"""Verifies that the README's extension examples work as documented against the real broker
(2 shards) started with examples/ringcast-examples.toml, the config the README tells readers
to use: examples/resume.py loses and repeats nothing across its deliberate reconnects, and
examples/queue_group.py gets every job done exactly once (skipped while the broker has no
queue groups)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import Broker, mint

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (ROOT / "examples" / "ringcast-examples.toml").read_text()
m_id = re.search(r'^id = "(sk_id_[^"]+)"', CONFIG, re.M)
m_secret = re.search(r'^secret = "(sk_secret_[^"]+)"', CONFIG, re.M)
KEY_ID, KEY_SECRET = m_id.group(1), m_secret.group(1)


@pytest.fixture(scope="module")
def eb():
    b = Broker(CONFIG, name="examples-broker")
    yield b
    b.stop()


def run_example(b, name, *args, timeout=90):
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--url", f"ws://127.0.0.1:{b.port}/v1",
         "--key-id", KEY_ID, "--key-secret", KEY_SECRET, *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.timeout(120)
def test_resume_example(eb) -> None:
    out = run_example(eb, "resume.py", "--count", "300", "--drop-every", "60", "--rate", "100")
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    lines = out.stdout.splitlines()
    assert lines[0].startswith("subscribed to runs/resume-demo/events: epoch "), out.stdout
    resumed = [l for l in lines if l.startswith("resumed from offset")]
    assert len(resumed) == 4 and all("recovered=true" in l for l in resumed), out.stdout
    # The producer went on while the subscriber was away: something was replayed.
    assert any(int(re.search(r"(\d+) missed", l).group(1)) > 0 for l in resumed), out.stdout
    assert re.fullmatch(r"received all 300 events in order \(offsets 1\.\.300\), no gap and no duplicate, "
                        r"across 4 reconnects", lines[-1]), out.stdout
    # A second run on the same channel continues the same epoch.
    out = run_example(eb, "resume.py", "--count", "50", "--drop-every", "20")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(offsets 301..350)" in out.stdout.splitlines()[-1], out.stdout


def _has_queue_groups(b) -> bool:
    c = b.connect(mint("probe", key_id=KEY_ID, secret=KEY_SECRET))
    m = c.request({"type": "subscribe", "channel": "jobs/probe", "group": "not a valid group!"})
    c.close()
    return m.get("code") == "invalid_group"


@pytest.mark.timeout(120)
def test_queue_group_example(eb) -> None:
    if not _has_queue_groups(eb):
        pytest.skip("this broker has no queue groups yet (protocol.md 8.2)")
    out = run_example(eb, "queue_group.py", "--workers", "4", "--jobs", "40")
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    lines = out.stdout.splitlines()
    assert lines[-1] == "all 40 jobs done exactly once by 4 workers", out.stdout
    counts = [int(re.fullmatch(r"worker-\d did (\d+) jobs", l).group(1)) for l in lines[:-1]]
    assert len(counts) == 4 and sum(counts) == 40, out.stdout
    assert min(counts) > 0, f"a worker got nothing: {out.stdout}"
