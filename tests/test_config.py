"""Configuration: precedence, pass-through of librdkafka settings, and errors that name the key."""

import pytest

from stream.cli import main
from stream.config import ConfigError, load_settings


def test_defaults_follow_the_design_topic_names():
    s = load_settings()
    assert s.topics.impressions == "glmix.impressions"
    assert s.topics.coefficients("member") == "glmix.coefficients.member"
    assert set(s.model.coordinates) == {"member", "job"}


def test_precedence_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "glmix.toml"
    path.write_text('state_dir = "/from/file"\n[topics]\npartitions = 6\n[kafka]\nbootstrap_servers = "file:9092"\n')
    env = {"GLMIX_TOPICS__PARTITIONS": "8", "GLMIX_STATE_DIR": "/from/env", "HOME": "/ignored"}
    s = load_settings(path, env=env, overrides={"state_dir": "/from/cli"})
    assert (s.kafka.bootstrap_servers, s.topics.partitions, s.state_dir) == ("file:9092", 8, "/from/cli")


def test_librdkafka_settings_pass_through_unchanged(tmp_path):
    path = tmp_path / "glmix.toml"
    path.write_text('[kafka.client]\n"security.protocol" = "SASL_SSL"\n"sasl.mechanism" = "SCRAM-SHA-512"\n"socket.keepalive.enable" = true\n')
    s = load_settings(path, env={"GLMIX_KAFKA__CLIENT__SASL_USERNAME": "svc"})
    assert s.kafka.client == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                              "socket.keepalive.enable": True, "sasl.username": "svc"}


def test_spark_properties_pass_through_unchanged(tmp_path):
    path = tmp_path / "glmix.toml"
    path.write_text('[refit]\nengine = "spark"\nspark_master = "local[2]"\n[refit.spark]\n"spark.executor.memory" = "4g"\n')
    s = load_settings(path, env={"GLMIX_REFIT__SPARK__SPARK_SQL_SHUFFLE_PARTITIONS": "8"},
                      overrides={"refit.spark.spark.ui.enabled": "false"})
    assert (s.refit.engine, s.refit.spark_master) == ("spark", "local[2]")
    assert s.refit.spark == {"spark.executor.memory": "4g", "spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false"}
    assert load_settings().refit.engine == "local" and load_settings().refit.negative_sample_rate == 1.0


def test_coordinates_file_defines_the_set_and_new_ones_need_their_keys(tmp_path):
    path = tmp_path / "glmix.toml"
    path.write_text('[model.coordinates.member]\nl2 = 10\n[model.coordinates.company]\nentity_field = "context:company"\nfeature_bags = ["member_skills"]\n')
    s = load_settings(path)
    assert set(s.model.coordinates) == {"member", "company"}
    assert s.model.coordinates["member"].l2 == 10.0 and s.model.coordinates["member"].entity_field == "member_id"
    path.write_text('[model.coordinates.company]\nfeature_bags = ["member_skills"]\n')
    with pytest.raises(ConfigError, match="model.coordinates.company.entity_field"):
        load_settings(path)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"kafka.bogus": "1"}, "kafka.bogus"),
        ({"model.loss": "hinge"}, "model.loss"),
        ({"model.coordinates.member.l2": "-1"}, "model.coordinates.member.l2"),
        ({"model.coordinates.job.forgetting": "1.5"}, "model.coordinates.job.forgetting"),
        ({"model.coordinates.job.l2": "nan"}, "model.coordinates.job.l2"),
        ({"topics.partitions": "four"}, "topics.partitions"),
        ({"topics.dead_letter": " "}, "topics.dead_letter"),
        ({"model.coordinates.member.precision": "sparse"}, "model.coordinates.member.precision"),
        ({"refit.engine": "flink"}, "refit.engine"),
        ({"refit.engine": "spark", "refit.offsets": "current"}, "refit.engine"),
        ({"refit.negative_sample_rate": "0"}, "refit.negative_sample_rate"),
        ({"refit.negative_sample_rate": "1.5"}, "refit.negative_sample_rate"),
        ({"refit.spark.executor.memory": "4g"}, "refit.spark.executor.memory"),
    ],
)
def test_bad_values_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_settings(overrides=overrides)
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


def test_unknown_environment_variable_names_the_key():
    with pytest.raises(ConfigError, match="'kafka.bootstrap_server'"):
        load_settings(env={"GLMIX_KAFKA__BOOTSTRAP_SERVER": "x"})


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.toml")


def test_cli_reports_config_errors_with_the_key(capsys):
    assert main(["demo", "--set", "topics.partitions=0"]) == 2
    assert "topics.partitions" in capsys.readouterr().err
