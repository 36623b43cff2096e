"""Prometheus's tools for the deploy tests: Debian's ``prometheus`` package, installed here if missing (CI is root)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _installed(tool: str) -> str:
    found = shutil.which(tool)
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"], env=env,
                       capture_output=True, timeout=900)
        found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed and could not be installed here (Debian package 'prometheus', as root)")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool, from Debian's prometheus package."""
    return _installed("promtool")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    """The prometheus server binary, from Debian's prometheus package."""
    return _installed("prometheus")
