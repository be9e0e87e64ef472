"""User-facing errors.

Every error a user can cause (bad config, missing data, incompatible checkpoint)
is raised as a `FlamError` whose message is one line naming the problem and the
fix. `train.py` prints that line and exits non-zero instead of a traceback.
"""


class FlamError(Exception):
  """Base class: a one-line, user-actionable error."""


class ConfigError(FlamError):
  """The config is inconsistent or names an unknown key."""


class DataError(FlamError):
  """The dataset directory is missing, empty, corrupt or of the wrong shape."""


class CheckpointError(FlamError):
  """A checkpoint cannot be restored into the current config."""


class TrainingError(FlamError):
  """Training diverged (a non-finite loss or gradient norm); the fix is in the config."""
