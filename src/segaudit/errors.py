"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class SegauditError(Exception):
    """Bad input from the user (config, data, checkpoint); never a bug in segaudit."""

    exit_code = 2


class ConfigError(SegauditError):
    """An override or config value that cannot be used."""


class DataError(SegauditError):
    """A dataset that cannot be read as configured."""


class TrainingFailed(Exception):
    """A run stopped on its own (e.g. a non-finite loss); its record says `failed`."""

    exit_code = 1
