"""Batched SPD solves: agreement with numpy, and per-matrix fallback for singular systems."""

import numpy as np

from stream.model.linalg import batched_cholesky, cholesky_solve, solve_spd


def test_batched_cholesky_matches_numpy_and_flags_indefinite_matrices():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 4, 4))
    spd = np.einsum("bij,bkj->bik", a, a) + 0.1 * np.eye(4)
    spd[3] = -np.eye(4)
    low, ok = batched_cholesky(spd)
    assert ok.tolist() == [True, True, True, False, True]
    np.testing.assert_allclose(low[ok], np.linalg.cholesky(spd[ok]), rtol=1e-12)
    rhs = rng.normal(size=(5, 4))
    np.testing.assert_allclose(cholesky_solve(low[ok], rhs[ok]), np.linalg.solve(spd[ok], rhs[ok][..., None])[..., 0], rtol=1e-10)


def test_solve_spd_loads_only_the_singular_matrix():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 3, 3))
    stack = np.einsum("bij,bkj->bik", a, a) + np.eye(3)
    stack[1] = np.ones((3, 3))  # rank one
    rhs = np.ones((3, 3))
    x, loading = solve_spd(stack, rhs)
    assert np.isfinite(x).all()
    assert loading[0] == 0 and loading[2] == 0 and loading[1] > 0
    np.testing.assert_allclose(x[[0, 2]], np.linalg.solve(stack[[0, 2]], rhs[[0, 2]][..., None])[..., 0])
    assert (np.einsum("bd,bd->b", rhs, x) > 0).all()  # every step is a descent direction
