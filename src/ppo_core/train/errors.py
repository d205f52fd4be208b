"""Exceptions the trainer raises for bad user input (the CLI prints them as one line)."""


class TrainError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(TrainError, ValueError):
    """A config file, key or value is invalid, or an environment id is unknown."""


class RunDirError(TrainError, ValueError):
    """A run directory is missing, is not a run, or already holds a run."""


class EnvWorkerError(TrainError, RuntimeError):
    """Environment workers kept failing: the vector env was rebuilt too many times in a row."""
