"""[train] engine picks the training engine of every trial of a study."""

import pytest

from sweep import load_spec, trial_config
from sweep.errors import SpecError
from tests.sweep.test_spec import MINIMAL, write


@pytest.mark.parametrize("engine", ["numpy", "compiled", "auto"])
def test_train_engine_reaches_the_trial_config(tmp_path, engine):
    spec = load_spec(write(tmp_path, MINIMAL.replace("eta = 0.5", f'eta = 0.5\nengine = "{engine}"')))
    assert trial_config(spec, {})[1].engine == engine


def test_the_engine_defaults_to_auto_and_an_unknown_one_is_refused(tmp_path):
    assert trial_config(load_spec(write(tmp_path, MINIMAL)), {})[1].engine == "auto"
    with pytest.raises(SpecError, match=r"train.engine: unknown engine 'gpu'; known: auto, numpy, compiled"):
        load_spec(write(tmp_path, MINIMAL.replace("eta = 0.5", 'eta = 0.5\nengine = "gpu"')))
