"""The settings schema on msgspec: text read by the setting's type, one-line errors phrased from declared bounds."""

import re
from pathlib import Path

import pytest

from stream.config import ConfigError, CoordinateSettings, Settings, load_settings


def test_environment_and_set_text_is_read_by_the_settings_type():
    s = load_settings(
        env={"GLMIX_SERVING__EXPLORATION": "yes", "GLMIX_METRICS__HISTORY_EDGES": "2, 4", "GLMIX_KAFKA__CONSUMER__FETCH_MIN_BYTES": "7"},
        overrides={"state_write_ahead_log": "NO", "model.transforms.age.kind": "bucketize", "model.transforms.age.boundaries": "18,30.5"},
    )
    assert s.serving.exploration is True and s.state_write_ahead_log is False
    assert s.metrics.history_edges == (2, 4)
    assert s.model.transforms["age"].boundaries == (18.0, 30.5)
    assert s.kafka.consumer == {"fetch.min.bytes": "7"}  # passed through as given


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"serving.workers": "0"}, "config key 'serving.workers': must be >= 1, got 0"),
        ({"model.coordinates.member.l2": "-1"}, "config key 'model.coordinates.member.l2': must be a finite number >= 0, got -1.0"),
        ({"model.coordinates.job.forgetting": "1.5"}, "config key 'model.coordinates.job.forgetting': must be in (0, 1], got 1.5"),
        ({"refit.window_hours": "inf"}, "config key 'refit.window_hours': must be a finite number > 0, got inf"),
        ({"joiner.labels.CLICK": "nan"}, "config key 'joiner.labels.CLICK': must be a finite number, got nan"),
        ({"metrics.history_edges": "1,0"}, "config key 'metrics.history_edges': must be >= 1, got 0"),
        ({"metrics.port": "70000"}, "config key 'metrics.port': must be a TCP port (0: any free port), got 70000"),
        ({"model.loss": "hinge"}, "config key 'model.loss': must be one of 'logistic', 'linear', 'poisson', got 'hinge'"),
        ({"topics.partitions": "four"}, "config key 'topics.partitions': expected an integer, got 'four'"),
        ({"state_write_ahead_log": "maybe"}, "config key 'state_write_ahead_log': expected true or false, got 'maybe'"),
        ({"topics.dead_letter": " "}, "config key 'topics.dead_letter': must be a non-blank name, got ' '"),
        ({"game_input.bags.member_skills": ""}, "config key 'game_input.bags.member_skills': must be a non-blank name, got ''"),
        ({"model.coordinates.company.l2": "1"}, "config key 'model.coordinates.company.entity_field': required: it has no default"),
        ({"model.coordinates.member.max_features": "1"},
         "config key 'model.coordinates.member.max_features': must be >= 2 when intercept = true (the intercept takes one column)"),
    ],
)
def test_errors_are_one_line_phrased_from_the_declared_bounds(overrides, line):
    with pytest.raises(ConfigError) as info:
        load_settings(overrides=overrides)
    assert str(info.value) == line


def test_an_unknown_key_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"'joiner.window_ms': unknown key \(known: allowed_lateness_ms, "):
        load_settings(overrides={"joiner.window_ms": "5"})


def test_a_struct_built_in_code_keeps_its_rules_and_stays_frozen():
    with pytest.raises(ConfigError, match="'max_features': must be >= 2 when intercept"):
        CoordinateSettings(entity_field="member_id", feature_bags=("job_title",), max_features=1)
    with pytest.raises(AttributeError):
        Settings().state_dir = "/elsewhere"  # type: ignore[misc]


def test_the_readme_configuration_reference_loads(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme[readme.index("## Configuration"):], re.S)
    assert block is not None
    (tmp_path / "readme.toml").write_text(block.group(1))
    s = load_settings(tmp_path / "readme.toml")
    assert s.serving == Settings().serving and s.topics == Settings().topics
