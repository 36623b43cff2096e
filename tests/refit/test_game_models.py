"""``glmix import photon`` / ``glmix export photon`` against a broker: a GAME model in, scored, out and in again."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.cli import main
from stream.codec import make_codec
from stream.codec.container import write_container
from stream.codec.photon_game import read_game_model
from stream.config import load_settings
from stream.kafka import producer_config
from stream.model.losses import get_loss
from stream.refit.game_models import PhotonModelMismatchError, plan_import
from stream.scoring.scorer import Scorer
from stream.state.changelog import states_from_records
from stream.tables.follower import ModelFollower
from stream.updaters.state_update import CoordinateMath
from tests.helpers import read_topic

LOGISTIC = "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel"
INTERCEPT = ("(INTERCEPT)", "")
JOB_KEYS = [("title", "nurse"), ("title", "engineer"), ("skill", "python"), ("skill", "sql"), ("company", "acme"),
            ("seniority", "senior")]
MEMBER_KEYS = [("mtitle", "nurse"), ("mskill", "python"), ("mskill", "care"), ("location", "paris")]


def _sets(unique_name: str, **extra: str) -> list[str]:
    values = {
        "kafka.group_prefix": unique_name, "topics.model_global": f"global-{unique_name}",
        "topics.coefficients_prefix": f"coef-{unique_name}-", "topics.examples_by_member": f"by-member-{unique_name}",
        "topics.examples_by_job": f"by-job-{unique_name}", "topics.partitions": "3", **extra,
    }
    return [item for key, value in values.items() for item in ("--set", f"{key}={value}")]


def _settings(kafka_bootstrap: str, unique_name: str, **extra: str):
    sets = _sets(unique_name, **extra)
    return load_settings(overrides={"kafka.bootstrap_servers": kafka_bootstrap,
                                    **dict(s.split("=", 1) for s in sets[1::2])})


def _record(model_id, pairs, variances=None):
    ntv = [{"name": n, "term": t, "value": float(v)} for (n, t), v in pairs]
    var = None if variances is None else [{"name": n, "term": t, "value": float(v)} for (n, t), v in variances]
    return {"modelId": model_id, "modelClass": LOGISTIC, "lossFunction": "", "means": ntv, "variances": var}


def _write_game(root, members: dict, jobs: dict, global_pairs, random_dirs=None) -> None:
    """A GAME directory as Photon-ML lays one out (our own coefficients): part files, id-info, metadata."""
    fixed = root / "fixed-effect" / "global"
    (fixed / "coefficients").mkdir(parents=True)
    (fixed / "id-info").write_text("globalShard\n")
    write_container(fixed / "coefficients" / "part-00000.avro", "BayesianLinearModelAvro",
                    [_record("fixed-effect", global_pairs)])
    dirs = random_dirs or {"member": "member_id", "job": "item_id"}
    for (name, field), entities in zip(dirs.items(), (members, jobs)):
        coordinate = root / "random-effect" / name
        (coordinate / "coefficients").mkdir(parents=True)
        (coordinate / "id-info").write_text(f"{field}\n{name}Shard\n")
        records = [_record(e, pairs, variances) for e, (pairs, variances) in entities.items()]
        half = len(records) // 2
        for part, chunk in enumerate((records[:half], records[half:])):
            write_container(coordinate / "coefficients" / f"part-{part:05d}.avro", "BayesianLinearModelAvro", chunk)
    (root / "model-metadata.json").write_text(json.dumps({"modelType": "LOGISTIC_REGRESSION",
                                                          "optimizationConfigurations": {"values": []}}))


def _fixture(root, seed: int = 3):
    """Members with a random subset of job features (and variances), jobs with member features (no variances)."""
    rng = np.random.default_rng(seed)
    members = {}
    for i in range(25):
        keys = [INTERCEPT] + [JOB_KEYS[k] for k in sorted(rng.choice(len(JOB_KEYS), size=3, replace=False))]
        means = rng.normal(size=len(keys))
        members[f"m{i}"] = (list(zip(keys, means)), list(zip(keys, rng.uniform(0.1, 2.0, size=len(keys)))))
    jobs = {f"j{i}": (list(zip([INTERCEPT, *MEMBER_KEYS], rng.normal(size=5))), None) for i in range(12)}
    global_pairs = list(zip([INTERCEPT, *JOB_KEYS, *MEMBER_KEYS], rng.normal(size=1 + len(JOB_KEYS) + len(MEMBER_KEYS))))
    _write_game(root, members, jobs, global_pairs)
    return members, jobs, global_pairs


def _entity_records(kafka_bootstrap, settings, coordinate):
    """Every EntityModel message of a coordinate's topic, decoded, with the partition it sits on."""
    topic = settings.topics.coefficients(coordinate)
    codec = make_codec("EntityModel", topic)
    return [(m.partition(), codec.decode(m.value())) for m in read_topic(kafka_bootstrap, topic)]


def _global_records(kafka_bootstrap, settings):
    codec = make_codec("GlobalModel", settings.topics.model_global)
    return [codec.decode(m.value()) for m in read_topic(kafka_bootstrap, settings.topics.model_global)]


def test_import_scores_as_the_files_say_and_export_reimports_exactly(kafka_bootstrap, unique_name, tmp_path, capsys):
    members, jobs, global_pairs = _fixture(tmp_path / "photon")
    args = ["--bootstrap-servers", kafka_bootstrap, *_sets(unique_name)]
    assert main(["import", "photon", "--model", str(tmp_path / "photon"), *args]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["published"] and printed["coordinates"]["member"]["entities"] == 25
    assert printed["coordinates"]["job"] == {"topic": f"coef-{unique_name}-job", "shard": "jobShard", "entities": 12,
                                             "features": 5, "dropped_features": 0}
    settings = _settings(kafka_bootstrap, unique_name)

    # scored from the topics as the files imply: global x.w + member z.alpha + job u.beta
    follower = ModelFollower(settings, kafka_bootstrap, client_id=f"test-{unique_name}")
    try:
        follower.catch_up(timeout_s=60)
        features = {"job_title": [{"name": "title", "term": "nurse", "value": 1.0}],
                    "job_skills": [{"name": "skill", "term": "sql", "value": 0.5}],
                    "member_skills": [{"name": "mskill", "term": "care", "value": 2.0}]}
        margins, _ = Scorer.following(settings.model, follower).rows_breakdown(
            [{"member_id": "m4", "item_id": "j7", "context": {}, "features": features}])
    finally:
        follower.close()
    x = {INTERCEPT: 1.0, ("title", "nurse"): 1.0, ("skill", "sql"): 0.5, ("mskill", "care"): 2.0}
    assert margins["global"][0] == pytest.approx(sum(x.get(k, 0.0) * v for k, v in global_pairs), abs=1e-12)
    assert margins["member"][0] == pytest.approx(sum(x.get(k, 0.0) * v for k, v in members["m4"][0]), abs=1e-12)
    assert margins["job"][0] == pytest.approx(sum(x.get(k, 0.0) * v for k, v in jobs["j7"][0]), abs=1e-12)

    # exported, the files hold the same coefficients, bit for bit
    assert main(["export", "photon", "--output", str(tmp_path / "out"), *args]) == 0
    exported = read_game_model(tmp_path / "out")
    (fixed,) = exported.fixed_effects
    assert list(zip(fixed.model.keys, fixed.model.means)) == global_pairs
    by_name = {effect.name: effect for effect in exported.random_effects}
    assert (by_name["member"].entity_field, by_name["job"].entity_field) == ("member_id", "item_id")
    for effect, source in ((by_name["member"], members), (by_name["job"], jobs)):
        assert sorted(m.model_id for m in effect.models) == sorted(source)
        for model in effect.models:
            written = dict(source[model.model_id][0])
            assert dict(zip(model.keys, model.means)) == {k: written.get(k, 0.0) for k in model.keys}
            assert set(written) <= set(model.keys)
    for model in by_name["member"].models:  # variances come back through the precision (1/(1/v))
        variances = dict(members[model.model_id][1])
        got = dict(zip(model.keys, model.variances))
        assert all(got[k] == pytest.approx(v, rel=1e-15) for k, v in variances.items())

    # and imported again (other topics), they publish the same records
    again = f"{unique_name}b"
    assert main(["import", "photon", "--model", str(tmp_path / "out"), "--bootstrap-servers", kafka_bootstrap,
                 *_sets(again)]) == 0
    second = _settings(kafka_bootstrap, again)
    first_global, second_global = _global_records(kafka_bootstrap, settings), _global_records(kafka_bootstrap, second)
    assert [(r["features"], r["coefficients"], r["coordinate_indices"]) for r in first_global] == [
        (r["features"], r["coefficients"], r["coordinate_indices"]) for r in second_global]
    for coordinate in ("member", "job"):
        one = {r["entity_id"]: r for _, r in _entity_records(kafka_bootstrap, settings, coordinate)}
        two = {r["entity_id"]: r for _, r in _entity_records(kafka_bootstrap, second, coordinate)}
        assert {e: r["means"] for e, r in one.items()} == {e: r["means"] for e, r in two.items()}
        for entity, record in one.items():
            np.testing.assert_allclose(np.frombuffer(two[entity]["precision"]), np.frombuffer(record["precision"]),
                                       rtol=1e-15)


def test_entities_land_where_their_examples_do_and_fit_the_updater_states(kafka_bootstrap, unique_name, tmp_path):
    _fixture(tmp_path / "photon")
    settings = _settings(kafka_bootstrap, unique_name)
    assert main(["import", "photon", "--model", str(tmp_path / "photon"), "--bootstrap-servers", kafka_bootstrap,
                 *_sets(unique_name)]) == 0
    examples_topic = settings.topics.examples("member", "member_id")
    producer = Producer(producer_config(settings.kafka))  # the joiner's partitioner places its examples
    placed = {}
    for i in range(25):
        producer.produce(examples_topic, key=f"m{i}".encode(), value=b"x",
                         on_delivery=lambda err, msg: placed.__setitem__(msg.key().decode(), msg.partition()))
    producer.flush(30)
    records = _entity_records(kafka_bootstrap, settings, "member")
    assert len({partition for partition, _ in records}) > 1
    partitions = len(producer.list_topics(examples_topic, timeout=10).topics[examples_topic].partitions)
    for partition, record in records:
        assert partition == record["source_partition"] == placed[record["entity_id"]]
        assert partition == zlib.crc32(record["entity_id"].encode()) % partitions
    coordinate = settings.model.coordinates["member"]
    math = CoordinateMath.of(coordinate, get_loss(settings.model.loss))
    states = states_from_records([r for _, r in records], math.layout, math.new_entity_precision)
    assert (states["version"] == 1).all() and (states["last_offset"] == -1).all()


def test_an_import_never_replaces_a_published_model(kafka_bootstrap, unique_name, tmp_path, capsys):
    _fixture(tmp_path / "photon")
    args = ["import", "photon", "--model", str(tmp_path / "photon"), "--bootstrap-servers", kafka_bootstrap,
            *_sets(unique_name)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds global model version 1" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("random_dirs, sets, named", [
    ({"per-user": "member_id", "job": "item_id"}, {}, "random-effect coordinate 'per-user' is not configured"),
    ({"member": "userId", "job": "item_id"}, {}, "random-effect coordinate 'member': entity id field 'userId'"),
    ({"member": "member_id", "job": "item_id"}, {"model.loss": "linear"}, "LOGISTIC_REGRESSION (logistic loss)"),
])
def test_a_model_that_does_not_fit_is_refused_in_one_line(tmp_path, capsys, unique_name, random_dirs, sets, named):
    _write_game(tmp_path, {"m1": ([(INTERCEPT, 0.5)], None)}, {"j1": ([(INTERCEPT, 0.1)], None)},
                [(INTERCEPT, 1.0)], random_dirs)
    assert main(["import", "photon", "--model", str(tmp_path), *_sets(unique_name, **sets)]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_a_shard_named_by_other_bags_is_refused(tmp_path, unique_name):
    _write_game(tmp_path, {"m1": ([(INTERCEPT, 0.5)], None)}, {"j1": ([(INTERCEPT, 0.1)], None)}, [(INTERCEPT, 1.0)])
    (tmp_path / "random-effect" / "member" / "id-info").write_text("member_id\nmember_title+member_skills\n")
    settings = load_settings(overrides={})
    with pytest.raises(PhotonModelMismatchError, match="'member': feature shard 'member_title\\+member_skills'"):
        plan_import(settings, tmp_path)


def test_dry_run_prints_the_mapping_without_a_broker(tmp_path, capsys, unique_name):
    _fixture(tmp_path)
    # job entities all carry the same 4 member keys + intercept: a capacity of 3 keeps the intercept and 2 of them
    assert main(["import", "photon", "--model", str(tmp_path), "--dry-run",
                 *_sets(unique_name, **{"model.coordinates.job.max_features": "3"})]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["published"] is False
    assert printed["global"] == {"fixed_effect": "global", "features": 11, "version": 1}
    assert printed["coordinates"]["job"]["features"] == 3 and printed["coordinates"]["job"]["dropped_features"] == 2
    assert printed["coordinates"]["member"]["topic"] == f"coef-{unique_name}-member"


def test_the_capacity_keeps_the_keys_most_entities_carry(tmp_path):
    members = {f"m{i}": ([(INTERCEPT, 1.0), (("title", "nurse"), 0.5)] + ([(("skill", "sql"), 0.1)] if i < 2 else [])
                         + ([(("skill", "rare"), 0.2)] if i == 0 else []), None) for i in range(4)}
    _write_game(tmp_path, members, {"j1": ([(INTERCEPT, 0.1)], None)}, [(INTERCEPT, 1.0)])
    settings = load_settings(overrides={"model.coordinates.member.max_features": "3"})
    plan = plan_import(settings, tmp_path)
    member = plan.coordinates["member"]
    assert member.index.keys == [INTERCEPT, ("title", "nurse"), ("skill", "sql")]
    assert member.dropped_features == [("skill", "rare")]
    assert member.means[member.entity_ids.index("m0")].tolist() == [1.0, 0.5, 0.1]


def test_an_entity_with_two_models_is_refused(tmp_path):
    _write_game(tmp_path, {"m1": ([(INTERCEPT, 0.5)], None), "m2": ([(INTERCEPT, 0.7)], None)},
                {"j1": ([(INTERCEPT, 0.1)], None)}, [(INTERCEPT, 1.0)])
    part = tmp_path / "random-effect" / "member" / "coefficients" / "part-00002.avro"
    write_container(part, "BayesianLinearModelAvro", [_record("m1", [(INTERCEPT, 0.9)])])
    with pytest.raises(PhotonModelMismatchError, match="entity 'm1' has more than one model"):
        plan_import(load_settings(overrides={}), tmp_path)


def test_the_game_input_id_field_is_the_random_effect_type_both_ways(tmp_path):
    """With game_input.ids.member = userId, a random effect typed userId imports, and export writes userId."""
    from stream.model.features import FeatureIndex
    from stream.refit.game_models import game_model_files

    _write_game(tmp_path, {"m1": ([(INTERCEPT, 0.5)], None)}, {"j1": ([(INTERCEPT, 0.1)], None)}, [(INTERCEPT, 1.0)],
                {"member": "userId", "job": "item_id"})
    with pytest.raises(PhotonModelMismatchError, match="entity id field 'userId'"):
        plan_import(load_settings(overrides={}), tmp_path)
    settings = load_settings(overrides={"game_input.ids.member": "userId"})
    plan = plan_import(settings, tmp_path)
    assert plan.coordinates["member"].entity_ids == ["m1"]
    indices = {name: FeatureIndex(c.feature_bags, capacity=c.max_features) for name, c in settings.model.coordinates.items()}
    written = game_model_files(settings, np.zeros(1), FeatureIndex(settings.model.global_feature_bags), indices,
                               {"member": (["m1"], [[0.5]], [None])})
    assert {e.name: (e.entity_field, len(e.models)) for e in written.random_effects} == {
        "member": ("userId", 1), "job": ("item_id", 0)}
