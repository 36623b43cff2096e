"""The batch GAME trainer on the synthetic world: it recovers the truth and beats global-only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from stream.config.settings import JOB_BAGS, MEMBER_BAGS
from stream.model import GLOBAL, CoordinateSpec, FeatureIndex, train_game
from stream.model.dataset import build_dataset
from stream.model.metrics import auc
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.synthetic.world import TITLES


@pytest.fixture(scope="module")
def trained():
    world = World(WorldSpec(seed=3, members=60, jobs=120, requests=16000, alice_annie_pairs=2))
    labeled = labeled_impressions(world)
    records = [li.impression for li in labeled]
    labels = np.array([li.clicked for li in labeled], dtype=float)
    cut_train, cut_val = int(0.7 * len(records)), int(0.8 * len(records))
    rows = [r["features"] for r in records[:cut_train]]
    coordinates = {
        "member": ("member_id", FeatureIndex.from_data(rows, JOB_BAGS, capacity=32)),
        "job": ("item_id", FeatureIndex.from_data(rows, MEMBER_BAGS, capacity=32)),
    }
    global_index = FeatureIndex.from_data(rows, MEMBER_BAGS + JOB_BAGS)
    split = [slice(0, cut_train), slice(cut_train, cut_val), slice(cut_val, None)]
    train, val, test = (build_dataset(records[s], labels[s], global_index, coordinates) for s in split)
    specs = {GLOBAL: CoordinateSpec(1.0), "member": CoordinateSpec(3.0, 1.0), "job": CoordinateSpec(3.0, 1.0)}
    result = train_game(train, val, specs, passes=2)
    true_margin = np.array([li.true_margin for li in labeled[cut_val:]])
    counts = Counter(r["member_id"] for r in records[:cut_train])
    return world, result, test, true_margin, coordinates, global_index, counts


def test_glmix_beats_global_only_on_held_out_data(trained):
    _, result, test, true_margin, *_ = trained
    global_auc = auc(test.labels, result.model.margins(test, [GLOBAL]))
    glmix_auc = auc(test.labels, result.model.margins(test))
    oracle_auc = auc(test.labels, true_margin)
    print(f"held-out AUC: global {global_auc:.4f}, GLMix {glmix_auc:.4f}, true model {oracle_auc:.4f}")
    assert glmix_auc > global_auc + 0.03
    assert glmix_auc > oracle_auc - 0.06


def test_learned_margins_recover_the_true_model(trained):
    _, result, test, true_margin, *_ = trained
    err_glmix = np.sqrt(np.mean((result.model.margins(test) - true_margin) ** 2))
    err_global = np.sqrt(np.mean((result.model.margins(test, [GLOBAL]) - true_margin) ** 2))
    corr = np.corrcoef(result.model.margins(test), true_margin)[0, 1]
    print(f"margin RMSE vs truth: GLMix {err_glmix:.3f}, global only {err_global:.3f}; correlation {corr:.3f}")
    assert err_glmix < 0.8 * err_global
    assert corr > 0.8


def test_alice_and_annie_get_opposite_tastes(trained):
    world, result, _, _, coordinates, *_ = trained
    index = coordinates["member"][1]
    member = result.model.random_effects["member"]
    for p, (alice, annie) in enumerate(world.truth.alice_annie):
        liked = index.column("job_title", world.truth_liked_title(p), admit=False)
        pos, known = member.lookup(np.array([alice, annie]))
        assert known.all()
        a, b = member.means[pos, liked]
        print(f"{alice}: {a:+.2f}  {annie}: {b:+.2f} on the title only Alice likes")
        assert a > b + 1.0


def test_validation_keeps_the_best_step(trained):
    _, result, *_ = trained
    values = [step.value for step in result.history]
    assert result.best_step == int(np.argmax(values))


def test_per_member_title_preferences_are_recovered(trained):
    """Per-member taste for job titles, learned vs true, double-centered.

    Only deviations are identifiable: a member's mean over titles trades off with her
    intercept, and a title's mean over members with the global and per-job coefficients.
    So both matrices (members x titles) are centered along both axes before comparing.
    """
    world, result, _, _, coordinates, _, counts = trained
    member_index = coordinates["member"][1]
    effect = result.model.random_effects["member"]
    members = np.array(sorted(counts))
    pos, known = effect.lookup(members)
    assert known.all()
    columns = [member_index.column("job_title", t, admit=False) for t in TITLES]
    learned = effect.means[pos][:, columns]
    true = np.array([[world.truth.member_effects[m][("job_title", t)] for t in TITLES] for m in members])

    def double_centered(a: np.ndarray) -> np.ndarray:
        return a - a.mean(axis=1, keepdims=True) - a.mean(axis=0, keepdims=True) + a.mean()

    learned, true = double_centered(learned), double_centered(true)
    rmse = np.sqrt(np.mean((learned - true) ** 2))
    spread = np.sqrt(np.mean(true**2))  # the error of knowing no member's taste at all
    corr = np.corrcoef(learned.ravel(), true.ravel())[0, 1]
    print(f"{members.size} members, ~{np.mean(list(counts.values())):.0f} training impressions each: per-member "
          f"title-taste RMSE {rmse:.3f} (no per-member model: {spread:.3f}), correlation {corr:.3f}")
    assert rmse < 0.8 * spread
    assert corr > 0.65


def test_select_l2_picks_the_validation_best_value(trained):
    from stream.model import select_l2
    from stream.model.game import GameDataset, RandomEffectData

    _, _, test, *_ = trained

    def rows(ds: GameDataset, s: slice) -> GameDataset:
        effects = {k: RandomEffectData(v.entity_ids[s], v.features[s]) for k, v in ds.random_effects.items()}
        return GameDataset(ds.global_features[s], ds.labels[s], effects)

    half = len(test) // 2
    fit, val = rows(test, slice(0, half)), rows(test, slice(half, None))
    specs = {GLOBAL: CoordinateSpec(1.0), "member": CoordinateSpec(1.0, 1.0)}
    grid = (0.01, 1000.0)
    chosen = select_l2(fit, val, specs, grid=grid)
    global_l2 = chosen[GLOBAL].l2
    by_value = {}
    for value in grid:
        trial = {GLOBAL: CoordinateSpec(global_l2), "member": CoordinateSpec(value, 1.0)}
        by_value[value] = auc(val.labels, train_game(fit, None, trial, passes=1).model.margins(val))
    assert chosen["member"].l2 == max(by_value, key=by_value.get)
    assert by_value[0.01] != by_value[1000.0]
    assert chosen["member"].intercept_l2 == 1.0
