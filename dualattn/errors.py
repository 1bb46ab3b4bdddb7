"""The one base class of errors a user can cause and fix (bad data, weights, workdir, config,
disk, divergence). Every entry point prints such an error as a single ``error:`` line naming
the fix (``dualattn.cli``); anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """An error whose message tells the user what went wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (with this data or these devices)."""
