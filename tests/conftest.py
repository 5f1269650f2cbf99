"""pytest wiring for the ringcast integration suite: broker fixtures and failure diagnostics.

Verifies that nothing here hides a failure: when a test fails, the output tail of every broker
still running is attached to the report (section "ringcast output")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and helpers.LIVE_BROKERS:
        tails = "\n".join(b.output_tail() for b in list(helpers.LIVE_BROKERS))
        report.sections.append(("ringcast output", tails))


@pytest.fixture(scope="module")
def broker():
    """A module-wide broker with the standard config (2 shards, default limits)."""
    b = helpers.Broker(helpers.DEFAULT_CONFIG, name="module-broker")
    yield b
    b.stop()


@pytest.fixture
def broker_factory():
    """Start extra brokers for one test: ``broker_factory(config_text, args=[...])``; all are
    stopped at teardown."""
    started = []

    def start(config=helpers.DEFAULT_CONFIG, args=(), **kw):
        b = helpers.Broker(config, args=args, **kw)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture(autouse=True)
def _close_clients_after_test():
    """Connections opened through any broker are closed after each test, so that presence
    rosters and connection caps of a module-wide broker start clean for the next test."""
    yield
    for b in list(helpers.LIVE_BROKERS):
        b.close_clients()
