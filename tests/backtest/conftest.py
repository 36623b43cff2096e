"""The backtest tests' shared world: built once per test module that uses it."""

import pytest

from stream.event_log import EventLog
from tests.backtest.worlds import emerging_world_log


@pytest.fixture(scope="module")
def emerging_log(tmp_path_factory) -> EventLog:
    """The emerging-vocabulary world's event log (:func:`tests.backtest.worlds.emerging_world_log`)."""
    return emerging_world_log(tmp_path_factory.mktemp("emerging"))
