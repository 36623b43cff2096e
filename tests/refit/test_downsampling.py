"""Negative down-sampling of the refit's training window: the same negatives every run, weighted back, calibration kept."""

from __future__ import annotations

import numpy as np
import pytest

from stream.archive.files import ArchiveFiles, hour_of
from stream.config import load_settings
from stream.model.export import initial_global_model_record
from stream.model.losses import get_loss
from stream.refit.job import GlobalRefit
from stream.refit.vocabulary import VocabularyCounter
from stream.refit.window import RefitWindow, sample_uniform, split_records
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.synthetic.examples import joined_examples
from stream.tables.models import GlobalModelTable
from tests.helpers import scanned_examples


@pytest.fixture(scope="module")
def world():
    """A world's joined examples and the model that indexed them (the default model settings)."""
    settings = load_settings()
    labeled = labeled_impressions(World(WorldSpec(seed=3, members=150, jobs=80, requests=3000)))
    table = GlobalModelTable(settings.model)
    table.apply([initial_global_model_record([li.impression for li in labeled], settings.model)])
    return table.current, joined_examples(labeled, table.current, settings.model)


def test_kept_negatives_are_chosen_by_example_id_and_weighted_by_the_inverse_rate(world):
    settings = load_settings(overrides={"refit.negative_sample_rate": "0.25"})
    model, examples = world
    window = RefitWindow(0, 2**62, 2**63 - 1)  # every example trains
    train, _, _ = split_records(scanned_examples(examples), model, {}, window, settings.refit, get_loss("logistic"),
                                VocabularyCounter(model, []))
    labels = np.array([e["label"] for e in examples])
    kept = sample_uniform([e["example_id"] for e in examples]) < 0.25
    assert train.rows == int((labels == 1).sum() + (kept & (labels == 0)).sum())
    assert 0.2 < (kept & (labels == 0)).sum() / (labels == 0).sum() < 0.3
    assert set(train.weights[train.labels == 0]) == {4.0} and set(train.weights[train.labels == 1]) == {1.0}
    again, _, _ = split_records(scanned_examples(examples[::-1]), model, {}, window, settings.refit, get_loss("logistic"),
                                VocabularyCounter(model, []))
    assert again.rows == train.rows  # the same examples in any order, any batch: a hash, not a draw


def test_a_down_sampled_refit_stays_calibrated_on_the_holdout(tmp_path, world):
    rate, (model, examples) = 0.3, world
    fits = {}
    for sampled in (1.0, rate):
        settings = load_settings(overrides={
            "state_dir": str(tmp_path / str(sampled)), "archive.path": str(tmp_path / "archive"),
            "refit.holdout_fraction": "0.25", "refit.negative_sample_rate": str(sampled), "refit.candidates": "standalone",
        })
        if sampled == 1.0:
            files = ArchiveFiles(settings.archive_path)
            for hour in sorted({hour_of(e["event_time"]) for e in examples}):
                files.write(hour, 0, 0, len(examples), [e for e in examples if hour_of(e["event_time"]) == hour])
        fits[sampled] = GlobalRefit(settings, publish=lambda record: None).run_from(model)
    full, down = fits[1.0], fits[rate]
    assert down.holdout_examples == full.holdout_examples and down.train_examples < 0.6 * full.train_examples
    trained = down.candidates["standalone"]  # the full step: what the down-sampled fit itself gives
    assert trained["observed_expected"] == pytest.approx(1.0, abs=0.08)
    assert trained["auc"] > full.candidates["standalone"]["auc"] - 0.01
