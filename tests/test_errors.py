"""User errors (policyshift.errors): one mixin the CLI catches, each class on its builtin base, one-line messages."""

import pytest

from policyshift import errors
from policyshift.config import ConfigError, OneLineError, short_repr
from policyshift.data import DataError
from policyshift.rewards import RewardError


def test_every_user_error_is_a_user_error_on_its_builtin_base():
    builtin = {"ModelError": ValueError, "RunDirError": ValueError, "TrainingError": RuntimeError, "CheckpointError": OSError,
               "TrackingError": ValueError, "OneLineError": ValueError}
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception) and c is not errors.UserError]
    assert len(classes) == 14  # OneLineError, ConfigError, DataError and the eleven that lived in their modules
    for cls in classes:
        assert issubclass(cls, errors.UserError), cls
        assert issubclass(cls, builtin.get(cls.__name__, ValueError)), cls  # checkpoint.LOAD_ERRORS and callers catch by the builtin
    from policyshift.checkpoint import CheckpointError
    from policyshift.models import ModelError
    from policyshift.analysis.ingest import LogImportError

    assert CheckpointError is errors.CheckpointError and ModelError is errors.ModelError and LogImportError is errors.LogImportError


# ---- one-line errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ConfigError, DataError, RewardError])
def test_user_errors_share_the_one_line_base(cls):
    assert issubclass(cls, OneLineError) and issubclass(cls, ValueError)
    assert str(cls("first line\nsecond\r\nthird")) == "first line second third"


def test_short_repr_cuts_at_the_limit():
    assert short_repr("abc") == "'abc'"
    assert short_repr("x" * 100) == repr("x" * 100)[:77] + "..." and len(short_repr("x" * 100)) == 80
    assert short_repr("x" * 100, 60) == repr("x" * 100)[:57] + "..."
    assert short_repr("x" * 58, 60) == repr("x" * 58)


def test_reward_error_cuts_a_bad_value_at_60_characters():
    from policyshift.rewards import FunctionReward

    with pytest.raises(RewardError) as info:
        FunctionReward(lambda p, r: ["y" * 200], "f")(["p"], ["r"])
    assert f"f returned {repr('y' * 200)[:57]}... (type str)" in str(info.value)
