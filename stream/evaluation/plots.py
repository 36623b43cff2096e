"""PNG plots of a progressive report: AUC and observed/expected over time, and a reliability diagram."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt


def _times(report: dict) -> list[datetime]:
    return [datetime.fromtimestamp((w["start_ms"] + w["end_ms"]) / 2000, tz=timezone.utc) for w in report["windows"]]


def _over_time(report: dict, metric: str, title: str, path: Path, reference: float | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    times = _times(report)
    for name in report["variants"]:
        values = [w["variants"][name][metric] for w in report["windows"]]
        ax.plot(times, [float("nan") if v is None else v for v in values], marker="o", label=name)  # type: ignore[arg-type]
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel("event time (UTC)")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _reliability(report: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, table in report["calibration"].items():
        ax.plot([row["predicted"] for row in table], [row["observed"] for row in table], marker="o", label=name)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title("reliability diagram")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(report: dict, directory: str | Path) -> list[Path]:
    """``auc_over_time.png``, ``observed_expected_over_time.png`` and ``reliability.png`` in ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _over_time(report, "auc", "progressive AUC by time window", out / "auc_over_time.png"),
        _over_time(
            report,
            "observed_expected",
            "observed / expected by time window",
            out / "observed_expected_over_time.png",
            reference=1.0,
        ),
        _reliability(report, out / "reliability.png"),
    ]
