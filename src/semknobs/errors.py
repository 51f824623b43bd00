"""User-facing errors.

Anything a user can cause (bad params, unreadable scans, inconsistent labels) raises a subclass of
:class:`SemknobsError` whose message names the file, lot or parameter at fault. Stage scripts and
the CLI turn it into one readable line on stderr and exit status 2, never a bare traceback.
"""


class SemknobsError(Exception):
    """An error the user can fix; the message says what and where."""


class ParamsError(SemknobsError):
    """A parameter in params.yaml (or on the command line) is missing, unknown or invalid."""


class DataError(SemknobsError):
    """An input file (scan, label table, manifest) is unreadable or inconsistent."""


class ValidationFailed(DataError):
    """Data validation found problems; the message is the full report."""


class ModelError(SemknobsError):
    """A model folder or registered model is missing, incomplete or of the wrong kind."""
