"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class: something the user can fix (config, data, checkpoint)."""

    exit_code = 1


class ConfigError(HarnessError, ValueError):
    """The experiment YAML or a CLI flag is wrong."""

    exit_code = 2


class UnknownNameError(ConfigError, KeyError):
    """A model or perturbation name is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataError(HarnessError):
    """The Fashion-MNIST files are missing, truncated or corrupt."""


class CheckpointError(HarnessError):
    """A user-supplied checkpoint cannot be loaded into its model."""
