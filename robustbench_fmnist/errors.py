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


class CheckpointError(ConfigError):
    """A checkpoint named in the YAML is missing or cannot be loaded into its model."""


class OutputError(ConfigError):
    """An output or cache path cannot be used: not a folder, not writable, busy, or not the harness's own."""


class ModelError(ConfigError):
    """A model misbehaves: its output has the wrong shape or type, or its training diverged."""


class UntrustedCodeError(ConfigError):
    """A report someone else wrote names code (a factory module) that running it again would import."""
