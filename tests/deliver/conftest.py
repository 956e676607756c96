"""Shared fixtures of the delivery tests: records, a spool, a receiver over real TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.receiver import ReceiverServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slower tests (crash loops); still in the default run")


@pytest.fixture
def receiver(tmp_path: Path):
    rx = ReceiverServer(tmp_path / "received", cert_dir=tmp_path / "certs", username="agent",
                        password="secret", seed=1234)
    url, ca = rx.start()
    yield rx
    rx.stop()


