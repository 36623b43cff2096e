"""Vectorized Newton updates vs. per-entity peers on the same data, in the same run.

Reproduce: pip install -e '.[bench]' && python bench/newton.py   (or: make bench)

For each configuration (B=2000 entities, d in {8, 32, 64}, n in {32, 256}, full and
diagonal prior precision) it prints one JSON line: entity updates/s and events/s of
``newton_update``, and of two peers run on a sample of the same entities — a per-entity
scipy L-BFGS loop and Lambda Learner's ``TrainerSequentialBayesianLogisticLossWithL2``
(PyPI ``lambda-learner``) — with the mean objective each reached on that sample. The
objective is the sequential-Bayesian one with forgetting 1, where Lambda Learner's and
ours coincide: sum_k w_k log(1 + exp(-y_k m_k)) + 1/2 (theta - m0)' P0 (theta - m0).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from stream.model import EntityEvents, GaussianPrior, newton_update, objective

REPRODUCE = "pip install -e '.[bench]' && python bench/newton.py"


def make_problem(rng: np.random.Generator, b: int, n: int, d: int, full: bool) -> tuple[EntityEvents, GaussianPrior]:
    """Logistic events drawn from per-entity truths, and a prior that looks like an earlier posterior."""
    z = (rng.random((b, n, d)) < 0.3).astype(np.float64) * rng.normal(1.0, 0.3, size=(b, n, d))
    z[:, :, 0] = 1.0
    truth = rng.normal(0.0, 0.7, size=(b, d))
    offsets = rng.normal(-1.0, 0.5, size=(b, n))
    p = 1.0 / (1.0 + np.exp(-(offsets + np.einsum("bnd,bd->bn", z, truth))))
    labels = (rng.random((b, n)) < p).astype(np.float64)
    weights = rng.choice([1.0, 1.0, 2.0], size=(b, n))
    mean0 = truth + rng.normal(0.0, 0.5, size=(b, d))
    history = (rng.random((b, 2 * d, d)) < 0.3).astype(np.float64)
    precision = 0.2 * np.einsum("bki,bkj->bij", history, history) + np.eye(d)
    if not full:
        precision = np.diagonal(precision, axis1=1, axis2=2).copy()
    return EntityEvents.build(z, labels, offsets, weights), GaussianPrior(mean0, precision)


def run_glmix(events: EntityEvents, prior: GaussianPrior, repeats: int, threads: int = 1) -> tuple[float, np.ndarray]:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = newton_update(events, prior, max_steps=10, gradient_tolerance=1e-6, threads=threads)
        best = min(best, time.perf_counter() - start)
    return best, result.mean


def _entity_objective(theta, z, y, o, w, m0, p0) -> tuple[float, np.ndarray]:  # noqa: ANN001
    """One entity's objective and gradient, as a per-entity peer computes it."""
    m = o + z @ theta
    prob = 1.0 / (1.0 + np.exp(-m))
    diff = theta - m0
    return w @ (np.logaddexp(0.0, m) - y * m) + 0.5 * diff @ p0 @ diff, z.T @ (w * (prob - y)) + p0 @ diff


def run_scipy_lbfgs(events: EntityEvents, prior: GaussianPrior, sample: np.ndarray) -> tuple[float, np.ndarray]:
    full = prior.full_precision()
    means = np.zeros((sample.size, events.dim))
    start = time.perf_counter()
    for i, e in enumerate(sample):
        args = (events.features[e], events.labels[e], events.offsets[e], events.weights[e], prior.mean[e], full[e])
        means[i] = minimize(_entity_objective, prior.mean[e], args=args, jac=True, method="L-BFGS-B", options={"gtol": 1e-6}).x
    return time.perf_counter() - start, means


def run_lambda_learner(events: EntityEvents, prior: GaussianPrior, sample: np.ndarray) -> tuple[float, np.ndarray] | None:
    try:
        from linkedin.learner.ds.indexed_dataset import IndexedDataset
        from linkedin.learner.ds.indexed_model import IndexedModel
        from linkedin.learner.prediction.hessian_type import HessianType
        from linkedin.learner.prediction.trainer_sequential_bayesian_logistic_loss_with_l2 import (
            TrainerSequentialBayesianLogisticLossWithL2,
        )
    except ImportError:
        return None
    kind = HessianType.DIAGONAL if prior.diagonal else HessianType.FULL
    full = prior.full_precision()
    inputs = [
        (IndexedDataset(sp.csr_matrix(events.features[e]), 2.0 * events.labels[e] - 1.0, events.weights[e], events.offsets[e]),
         IndexedModel(prior.mean[e].copy(), sp.csr_matrix(full[e])))
        for e in sample
    ]
    means = np.zeros((sample.size, events.dim))
    start = time.perf_counter()
    for i, (data, model) in enumerate(inputs):
        trainer = TrainerSequentialBayesianLogisticLossWithL2(
            training_data=data, initial_model=model, hessian_type=kind, penalty=1.0, delta=1.0)
        updated, _, _ = trainer.train()
        means[i] = updated.theta
    return time.perf_counter() - start, means


def mean_objective(events: EntityEvents, prior: GaussianPrior, sample: np.ndarray, means: np.ndarray) -> float:
    sub = EntityEvents(*(a[sample] for a in (events.features, events.labels, events.offsets, events.weights, events.mask)))
    return float(objective(sub, prior.take(sample), means).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--peer-sample", type=int, default=100, help="entities the per-entity peers solve")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for d in (8, 32, 64):
        for n in (32, 256):
            for full in (True, False):
                events, prior = make_problem(rng, args.entities, n, d, full)
                sample = np.arange(min(args.peer_sample, args.entities))
                seconds, means = run_glmix(events, prior, args.repeats)
                line = {
                    "bench": "newton", "entities": args.entities, "dim": d, "events_per_entity": n,
                    "precision": "full" if full else "diagonal",
                    "glmix_entity_updates_per_s": round(args.entities / seconds),
                    "glmix_events_per_s": round(args.entities * n / seconds),
                    "glmix_mean_objective_on_sample": mean_objective(events, prior, sample, means[sample]),
                    "glmix_2_threads_entity_updates_per_s": round(args.entities / run_glmix(events, prior, args.repeats, 2)[0]),
                    "peer_sample_entities": int(sample.size),
                }
                lb_seconds, lb_means = run_scipy_lbfgs(events, prior, sample)
                line["scipy_lbfgs_entity_updates_per_s"] = round(sample.size / lb_seconds)
                line["scipy_lbfgs_mean_objective_on_sample"] = mean_objective(events, prior, sample, lb_means)
                ll = run_lambda_learner(events, prior, sample)
                if ll is None:
                    line["lambda_learner"] = "not installed: pip install -e '.[bench]'"
                else:
                    ll_seconds, ll_means = ll
                    line["lambda_learner_entity_updates_per_s"] = round(sample.size / ll_seconds)
                    line["lambda_learner_mean_objective_on_sample"] = mean_objective(events, prior, sample, ll_means)
                    line["speedup_vs_lambda_learner"] = round(line["glmix_entity_updates_per_s"] / line["lambda_learner_entity_updates_per_s"], 1)
                line["reproduce"] = REPRODUCE
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
