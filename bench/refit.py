"""The global refit vs scikit-learn's LogisticRegression(lbfgs) on the same sparse data, same objective.

Reproduce: pip install -e '.[bench]' && python bench/refit.py   (or: make bench; --quick for a smoke run)

Data: N training examples (default 1M) over P sparse features (default 1,000, about 20
non-zero per row plus the intercept), logistic labels from a known truth, and a later
holdout of N/10. They are written once as archived LabeledExample Avro files (what the
refit reads in production) and as CSR arrays (what scikit-learn is given). Each
contender runs in its own process, so its peak resident memory is its own:

* ``glmix-refit``: the real refit path — archive files -> spilled chunks -> L-BFGS over
  chunks (``GlobalRefit.read_window`` + ``GlobalRefit.fit``); time includes reading Avro.
* ``glmix-refit-spark``: the same refit on the Spark engine (``refit.engine = "spark"``,
  ``local[2]``): executors read the Avro files and sum the partials; ``spark_start_s`` is
  the JVM and session start, outside ``fit_total_s``. Its coefficients must equal the
  local refit's (``max_rel_diff_vs_local``).
* ``glmix-refit-neg-R``: the local refit with ``refit.negative_sample_rate = R`` (0.3, 0.1):
  fewer training rows, importance-weighted; ``holdout_auc`` and ``holdout_observed_expected``
  say what it costs (the full refit's are on its own line).
* ``glmix-in-memory``: the same L-BFGS on the CSR matrix held in memory.
* ``sklearn-lbfgs``: ``LogisticRegression(C=1/l2, solver="lbfgs", fit_intercept=True)``.
* ``baseline``: the interpreter with numpy, scipy, scikit-learn and glmix imported.

Every contender minimizes sum log-loss + l2/2 * ||w||^2 (intercept not penalized); each
line reports the objective it reached, evaluated by the same function.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPRODUCE = "pip install -e '.[bench,spark]' && python bench/refit.py"
SAMPLE_RATES = (0.3, 0.1)
L2 = 1.0
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
SPAN_MS = 10 * 3_600_000
HOLDOUT_FRACTION = 0.1


def make_data(directory: Path, n: int, p: int, nnz: int, seed: int = 0) -> None:
    """CSR arrays of n training + n/10 holdout rows, and the same rows as archived LabeledExample files."""
    from stream.archive.files import ArchiveFiles, hour_of

    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 0.4, size=p)
    truth[0] = -1.0
    holdout = n // 10
    total = n + holdout
    counts = rng.integers(nnz // 2, nnz + nnz // 2 + 1, size=total)
    popularity = 1.0 / np.arange(1, p) ** 0.8
    columns = rng.choice(np.arange(1, p), size=int(counts.sum()), p=popularity / popularity.sum())
    rows = np.repeat(np.arange(total), counts)
    x = sp.csr_matrix((rng.lognormal(0.0, 0.5, size=len(columns)), (rows, columns)), shape=(total, p))
    x.sum_duplicates()
    x = sp.hstack([sp.csr_matrix(np.ones((total, 1))), x[:, 1:]], format="csr")
    labels = (rng.random(total) < 1.0 / (1.0 + np.exp(-(x @ truth)))).astype(np.float64)
    train_end = T0 + int(SPAN_MS * (1 - HOLDOUT_FRACTION))
    times = np.concatenate([np.sort(rng.integers(T0, train_end, size=n)), np.sort(rng.integers(train_end, T0 + SPAN_MS, size=holdout))])
    train = x[:n]
    np.save(directory / "indptr.npy", train.indptr)
    np.save(directory / "indices.npy", train.indices.astype(np.int32))
    np.save(directory / "values.npy", train.data.astype(np.float32))
    np.save(directory / "labels.npy", labels[:n])
    files = ArchiveFiles(str(directory / "archive"))
    data32, indices32 = x.data.astype("<f4"), x.indices.astype("<i4")
    hours = np.array([hour_of(int(t)) for t in times])
    for hour in np.unique(hours):
        selected = np.flatnonzero(hours == hour)
        records = (
            {"example_id": f"e{i}", "member_id": f"m{i % 5000}", "item_id": f"j{i % 700}", "label": float(labels[i]),
             "weight": 1.0, "offset": 0.0, "event_time": int(times[i]), "label_time": int(times[i]),
             "interaction_types": [], "scores": {}, "model_versions": {},
             "global_features": {"indices": indices32[x.indptr[i]:x.indptr[i + 1]].tobytes(),
                                 "values": data32[x.indptr[i]:x.indptr[i + 1]].tobytes()},
             "coordinates": {}, "index_version": 1}
            for i in selected
        )
        files.write(int(hour), 0, int(selected[0]), int(selected[-1]), records)
    (directory / "meta.json").write_text(json.dumps({"n": n, "p": p, "holdout": holdout}))


def objective(x: sp.csr_matrix, labels: np.ndarray, beta: np.ndarray) -> float:
    """sum log(1 + exp(-s m)) + l2/2 ||beta[1:]||^2 — the one objective every contender is judged by."""
    margins = x @ beta
    return float(np.sum(np.logaddexp(0.0, margins) - labels * margins) + 0.5 * L2 * beta[1:] @ beta[1:])


def _train_matrix(directory: Path) -> tuple[sp.csr_matrix, np.ndarray]:
    meta = json.loads((directory / "meta.json").read_text())
    x = sp.csr_matrix((np.load(directory / "values.npy").astype(np.float64), np.load(directory / "indices.npy"),
                       np.load(directory / "indptr.npy")), shape=(meta["n"], meta["p"]))
    return x, np.load(directory / "labels.npy")


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM: unlike ru_maxrss it starts afresh at exec, not at the parent's size)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_contender(name: str, directory: Path) -> dict:
    """Fit with one contender in this process; returns its timings, objective and peak memory."""
    import sklearn.linear_model  # noqa: F401  (imported by every contender, so baselines compare)

    from stream.config import load_settings
    from stream.model.export import global_model_record
    from stream.model.features import FeatureIndex
    from stream.model.game import GameModel
    from stream.refit.job import GlobalRefit
    from stream.refit.window import RefitWindow
    from stream.tables.models import GlobalModel

    meta = json.loads((directory / "meta.json").read_text())
    p = meta["p"]
    started = time.perf_counter()
    out: dict = {"contender": name}
    if name.startswith("glmix-refit"):
        from contextlib import ExitStack

        from stream.model.losses import get_loss
        from stream.refit.gate import holdout_metrics

        rate = name.removeprefix("glmix-refit-neg-") if name.startswith("glmix-refit-neg-") else "1"
        engine = "spark" if name == "glmix-refit-spark" else "local"
        settings = load_settings(overrides={"archive.path": str(directory / "archive"), "model.global_l2": L2,
                                            "refit.max_iterations": 1000, "model.coordinates.member.feature_bags": "b",
                                            "model.coordinates.job.feature_bags": "b", "model.global_feature_bags": "b",
                                            "refit.negative_sample_rate": rate, "refit.engine": engine,
                                            "refit.spark_master": "local[2]", "refit.spark.spark.ui.enabled": "false",
                                            "refit.spark.spark.driver.memory": "4g"})
        index = FeatureIndex(["b"], [(f"f{j}", "") for j in range(1, p)], version=1)
        record = global_model_record(GameModel("logistic", np.zeros(p)), index,
                                     {"member": FeatureIndex(["b"], version=1), "job": FeatureIndex(["b"], version=1)}, 1)
        model = GlobalModel.from_record(record, settings.model)
        refit = GlobalRefit(settings)
        if engine == "spark":
            refit.engine.session.sparkContext.setLogLevel("ERROR")
            out["spark_start_s"] = time.perf_counter() - started
            started = time.perf_counter()
        window = RefitWindow(T0, T0 + int(SPAN_MS * (1 - HOLDOUT_FRACTION)), T0 + SPAN_MS)
        with ExitStack() as scope:
            inputs = refit.read_window(scope, window, model, {})
            out["spill_s"] = time.perf_counter() - started
            beta = refit.fit(inputs.train, np.zeros(p))
            out["train_rows"] = inputs.train.rows
            out["fit_total_s"] = time.perf_counter() - started
            holdout = holdout_metrics(inputs.holdout.column("labels"), inputs.holdout.column("weights"),
                                      inputs.holdout.margins(beta), get_loss("logistic"))
        out["holdout_auc"], out["holdout_observed_expected"] = holdout["auc"], holdout["observed_expected"]
    elif name == "glmix-in-memory":
        from stream.model.game import CoordinateSpec, fit_global
        from stream.model.losses import get_loss

        x, y = _train_matrix(directory)
        beta = fit_global(x, y, np.ones(len(y)), np.zeros(len(y)), CoordinateSpec(l2=L2, intercept_l2=0.0),
                          get_loss("logistic"), max_iterations=1000, tolerance=1e-9)
    elif name == "sklearn-lbfgs":
        from sklearn.linear_model import LogisticRegression

        x, y = _train_matrix(directory)
        fitted = LogisticRegression(C=1.0 / L2, solver="lbfgs", tol=1e-8, max_iter=1000).fit(x[:, 1:], y)
        beta = np.concatenate([fitted.intercept_, fitted.coef_[0]])
    else:
        beta = None
    out.setdefault("fit_total_s", time.perf_counter() - started)
    out["peak_rss_bytes"] = peak_rss_bytes()
    if beta is not None:
        out["beta"] = beta.tolist()
    return out


def main() -> None:
    """Make the data, run every contender in its own process, print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--nnz", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="20k examples, 200 features (smoke run)")
    parser.add_argument("--no-spark", action="store_true", help="leave out the Spark engine (no pyspark or Java)")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        print(json.dumps(run_contender(args.contender, args.data)))
        return
    if args.quick:
        args.examples, args.features = 20_000, 200
    reproduce = REPRODUCE + "".join(f" {a}" for a in sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="glmix-bench-refit-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        make_data(directory, args.examples, args.features, args.nnz)
        data_s = time.perf_counter() - started
        x, y = _train_matrix(directory)
        archive_bytes = sum(f.stat().st_size for f in (directory / "archive").rglob("*.avro"))
        results = {}
        names = ["baseline", "glmix-refit", *(f"glmix-refit-neg-{r}" for r in SAMPLE_RATES)]
        names += [] if args.no_spark else ["glmix-refit-spark"]
        for name in [*names, "glmix-in-memory", "sklearn-lbfgs"]:
            done = subprocess.run([sys.executable, __file__, "--contender", name, "--data", str(directory)],
                                  check=True, capture_output=True, text=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        reference = objective(x, y, np.array(results["sklearn-lbfgs"]["beta"]))
        for name, result in results.items():
            line = {"reproduce": reproduce, "contender": name, "examples": args.examples, "features": args.features,
                    "nnz_per_row": round(x.nnz / x.shape[0], 1), "archive_bytes": archive_bytes,
                    "data_prep_s": round(data_s, 1), "fit_total_s": round(result["fit_total_s"], 2),
                    "peak_rss_bytes": result["peak_rss_bytes"]}
            if name != "baseline":
                line["peak_rss_over_baseline_bytes"] = result["peak_rss_bytes"] - results["baseline"]["peak_rss_bytes"]
            if "spill_s" in result:
                line["read_and_spill_s"] = round(result["spill_s"], 2)
            for key in ("spark_start_s", "holdout_auc", "holdout_observed_expected", "train_rows"):
                if key in result:
                    line[key] = round(result[key], 4) if isinstance(result[key], float) else result[key]
            if name == "glmix-refit-spark":
                local = np.array(results["glmix-refit"]["beta"])
                line["max_rel_diff_vs_local"] = float(np.abs(np.array(result["beta"]) - local).max() / np.abs(local).max())
            if "beta" in result:
                reached = objective(x, y, np.array(result["beta"]))
                line["objective"] = reached
                line["objective_rel_gap_vs_sklearn"] = (reached - reference) / abs(reference)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
