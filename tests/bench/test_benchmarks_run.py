"""The benchmarks still run and print one JSON object per line with units in the keys (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "rate_key"), [
    ("newton.py", ["--entities", "64", "--peer-sample", "4", "--repeats", "1"], "glmix_entity_updates_per_s"),
    ("decode.py", ["--records", "500", "--repeats", "1"], "records_per_s"),
    ("pipeline.py", ["--quick"], None),
    ("scoring.py", ["--quick"], None),
    ("refit.py", ["--quick"], None),
    ("run_all.py", ["--quick"], None),
    ("backtest.py", ["--quick"], None),
    ("freshness.py", ["--quick"], None),
    ("river_peer.py", ["--quick"], None),
    ("soak.py", ["--quick"], None),
    ("join_peers.py", ["--quick"], None),  # builds bench/.peers-venv on first use (PyPI)
])
def test_benchmark_prints_json_lines(script, args, rate_key):
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, check=True, timeout=600).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and all("reproduce" in line for line in lines)
    for line in lines:
        measured = [line[rate_key]] if rate_key else [v for k, v in line.items() if k.endswith(("_per_s", "_ms", "_bytes"))
                                                      and v is not None]
        assert measured and all(value > 0 for value in measured), line
