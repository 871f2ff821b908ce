"""normexp.stable_lr.study: opening and resuming an Optuna study in a temporary SQLite storage."""

import pytest

from normexp.errors import ConfigError
from normexp.stable_lr import study as studies
from tests.conftest import compose_search


def test_resuming_with_other_training_settings_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    studies.open_study(compose_search(f"search.storage={storage}", "search.study_name=s"))
    with pytest.raises(ConfigError, match=r"optim.weight_decay: 0.0 -> 0.1"):
        studies.open_study(compose_search(f"search.storage={storage}", "search.study_name=s", "optim.weight_decay=0.1"))
