"""Exploration from the posterior: UCB adds the margin's standard deviation, Thompson draws are seeded and centred."""

from __future__ import annotations

import numpy as np
import pytest

from stream.config import load_settings
from stream.model.export import initial_global_model_record
from stream.scoring.scorer import EXPLORATION, Exploration, Scorer
from stream.state.entity_state import StateLayout
from stream.tables.models import CoefficientTable, GlobalModelTable

D = 4
JOB_TITLE = {"job_title": [{"name": "title", "term": "nurse", "value": 1.0}]}


def _scorer(keep_posteriors: bool = True):
    settings = load_settings(overrides={"model.coordinates.member.max_features": str(D),
                                        "model.coordinates.job.max_features": str(D)})
    record = initial_global_model_record([{"features": JOB_TITLE}], settings.model)
    global_models = GlobalModelTable(settings.model)
    global_models.apply([record])
    tables = {n: CoefficientTable(n, D, keep_posteriors=keep_posteriors) for n in settings.model.coordinates}
    precision = np.diag([4.0, 1.0, 1.0, 1.0]) + 0.5  # a full precision with correlations
    packed = StateLayout(D, diagonal=False, window=0).pack_precision(precision[None])[0]
    tables["member"].apply([{"entity_id": "m", "version": 3, "means": [0.2, 1.0, 0.0, 0.0],
                             "precision_kind": "PACKED_UPPER", "precision": packed.tobytes()}])
    return Scorer(settings.model, global_models, tables), precision


def test_ucb_adds_width_standard_deviations_of_the_random_effect_margin():
    scorer, precision = _scorer()
    [plain] = scorer.score("m", {}, [{"item_id": "j", "features": JOB_TITLE}])
    [ucb] = scorer.score("m", {}, [{"item_id": "j", "features": JOB_TITLE}], exploration=Exploration("ucb", width=2.0))
    z = np.array([1.0, 1.0, 0.0, 0.0])  # intercept + the title's column
    expected = 2.0 * np.sqrt(z @ np.linalg.inv(precision) @ z)
    assert ucb.breakdown[EXPLORATION] == pytest.approx(expected)
    assert ucb.margin == pytest.approx(plain.margin + expected)
    assert ucb.margin == pytest.approx(sum(ucb.breakdown.values()))


def test_thompson_draws_are_reproducible_and_centred_on_the_posterior_mean():
    scorer, precision = _scorer()
    candidates = [{"item_id": "j", "features": JOB_TITLE}]
    [plain] = scorer.score("m", {}, candidates)
    draws = [scorer.score("m", {}, candidates, exploration=Exploration("thompson", seed=s))[0].breakdown["member"]
             for s in range(2000)]
    again = scorer.score("m", {}, candidates, exploration=Exploration("thompson", seed=7))[0].breakdown["member"]
    assert again == draws[7] and len(set(draws[:10])) == 10
    z = np.array([1.0, 1.0, 0.0, 0.0])
    sd = np.sqrt(z @ np.linalg.inv(precision) @ z)
    assert np.mean(draws) == pytest.approx(plain.breakdown["member"], abs=4 * sd / np.sqrt(2000))
    assert np.std(draws) == pytest.approx(sd, rel=0.1)


def test_exploring_needs_the_posteriors_and_a_known_policy():
    scorer, _ = _scorer(keep_posteriors=False)
    with pytest.raises(ValueError, match="keeps no posteriors"):
        scorer.score("m", {}, [{"item_id": "j"}], exploration=Exploration("ucb"))
    with pytest.raises(ValueError, match="policy"):
        Exploration("epsilon-greedy")
