"""A Keras 3 model from a `.keras` file, on Keras' torch backend (the optional `keras` extra).

On that backend a Keras model is a torch module: its layers run torch operations and its weights
are torch parameters, so the harness's evaluation, gradient searches and bench apply to it as to
any torch model. The file is loaded with Keras' safe mode, which refuses to deserialise code (a
Lambda layer's bytecode); a file that needs custom layers the process has not registered does not
load, and the entry says so. The file's bytes are kept to build the model again in another process
(a Ray worker), where nothing reads the driver's path.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_fmnist.errors import ConfigError
from robustbench_fmnist.models.outside import (
    InputForm,
    Layout,
    Normalization,
    check_image_input,
    check_one,
    check_scores_output,
)

INSTALL = "pip install 'robustbench_fmnist[keras]' (or `make setup`, which installs it)"


def keras_on_torch() -> Any:
    """The keras module on the torch backend, or a ConfigError saying how to install it or why not."""
    loaded = sys.modules.get("keras")
    if loaded is None:
        os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is first imported
        try:
            import keras
        except ImportError:
            raise ConfigError(f"Keras models need the keras extra: {INSTALL}") from None
        loaded = keras
    backend = loaded.backend.backend()
    if backend != "torch":
        raise ConfigError(
            f"keras was imported on its {backend} backend before the harness could choose torch; "
            "set KERAS_BACKEND=torch (or do not import keras before the harness)"
        )
    return loaded


def load_keras(content: bytes, where: str) -> nn.Module:
    """The Keras model a `.keras` file's bytes hold, loaded in safe mode; a ConfigError naming `where` if not."""
    keras = keras_on_torch()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"  # load_model reads a file named .keras
        path.write_bytes(content)
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160]
            raise ConfigError(f"{where} is not a Keras 3 model Keras can load in safe mode ({reason})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: Keras loaded a {type(model).__name__}, not a model on the torch backend")
    return model


def read_keras(path: Path, layout: Layout, channels: int, where: str) -> bytes:
    """The file's bytes, its model loaded and its input and output checked before any work."""
    keras_on_torch()
    if not path.is_file():
        raise ConfigError(f"{where}: {path} does not exist; give the path of a .keras file")
    content = path.read_bytes()
    where = f"{where}: {path}"
    model = load_keras(content, where)
    inputs, outputs = list(getattr(model, "inputs", None) or []), list(getattr(model, "outputs", None) or [])
    if not inputs or not outputs:
        raise ConfigError(f"{where}: the model declares no input shape; save it built on an Input of 28x28 images")
    check_one("input", [t.name for t in inputs], where)
    check_image_input(inputs[0].name, list(inputs[0].shape), layout, channels, where)
    check_one("output", [t.name for t in outputs], where)
    check_scores_output(outputs[0].name, list(outputs[0].shape), where)
    return content


class KerasModel(nn.Module):
    """A Keras model on the torch backend, taking the harness's (N, 1, 28, 28) images in [0, 1]."""

    compilable = False  # Keras' layers dispatch through its own ops: compiling them is not tried here

    def __init__(self, content: bytes, form: InputForm, where: str) -> None:
        super().__init__()
        self.form = form
        self.keras_model = load_keras(content, where)
        self.parameter_count = int(self.keras_model.count_params())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores for a batch: the images laid out as the model takes them, through its layers."""
        scores = self.keras_model(self.form.arrange(images).contiguous(), training=False)
        return scores.float() if scores.dtype != torch.float32 else scores


@dataclass(frozen=True)
class KerasBuilder:
    """Builds the KerasModel of one file's bytes (picklable: it travels to Ray workers with the model spec)."""

    content: bytes
    form: InputForm
    where: str

    def __call__(self) -> KerasModel:
        return KerasModel(self.content, self.form, self.where)


__all__ = ["INSTALL", "KerasBuilder", "KerasModel", "Normalization", "keras_on_torch", "read_keras"]
