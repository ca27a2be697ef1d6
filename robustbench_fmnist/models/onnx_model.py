"""A model from any framework, as an ONNX file evaluated through ONNX Runtime (the optional `onnx` extra).

The file is data: its bytes are read once, checked (one image input of 28x28 with 1 or 3 channels
in the declared layout, one output of 10 scores), and run by ONNX Runtime's CPU provider; nothing
named in it is imported. Perturbations stay in torch: a batch (N, 1, 28, 28) in [0, 1] is
normalised if the entry asks, repeated to 3 channels if the model takes them, laid out as NCHW or
NHWC, and handed to the session as float32 in chunks of the batch size the file fixes (padded at
the end), or whole when its batch axis is free.

The bytes are the model's one buffer, so they travel wherever its state dict does (a Ray task's
weights) and `weights_sha256` hashes them. ONNX Runtime gives no gradients: gradient searches and
the adaptations that train (bn, tent) do not apply.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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

INSTALL = "pip install 'robustbench_fmnist[onnx]' (or `make setup`, which installs it)"


@dataclass(frozen=True)
class OnnxSignature:
    """What the harness read from an ONNX file: its input and output names, layout, channels and fixed batch."""

    input_name: str
    output_name: str
    layout: Layout
    channels: int
    batch: int | None  # the batch size the file fixes; None when its batch axis is free


def onnx_runtime() -> Any:
    """The onnxruntime module, or a ConfigError saying how to install the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"ONNX models need the onnx extra: {INSTALL}") from None
    return onnxruntime


def read_onnx(path: Path, layout: Layout, channels: int, where: str) -> tuple[bytes, OnnxSignature]:
    """The file's bytes and signature, checked before any work: a ConfigError naming `where` and the fix."""
    runtime = onnx_runtime()
    if not path.is_file():
        raise ConfigError(f"{where}: {path} does not exist; give the path of an .onnx file")
    content = path.read_bytes()
    try:
        session = _session(runtime, content, threads=1)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ConfigError(f"{where}: {path} is not an ONNX model ONNX Runtime can load ({reason})") from None
    return content, _signature(session, layout, channels, f"{where}: {path}")


def _signature(session: Any, layout: Layout, channels: int, where: str) -> OnnxSignature:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    check_one("input", [i.name for i in inputs], where)
    (given,) = inputs
    if given.type != "tensor(float)":
        raise ConfigError(f"{where}: input {given.name!r} is {given.type}; export the model with a float32 input")
    check_image_input(given.name, list(given.shape), layout, channels, where)
    check_one("output", [o.name for o in outputs], where)
    (scores,) = outputs
    check_scores_output(scores.name, list(scores.shape), where)
    fixed = given.shape[0]
    return OnnxSignature(
        given.name, scores.name, layout, channels, fixed if isinstance(fixed, int) and fixed > 0 else None
    )


def initializer_count(content: bytes) -> int | None:
    """The numbers in an ONNX file's float initializers (its weights, and constants such as a normalisation's);
    None without `onnx`."""
    try:
        import onnx
    except ImportError:
        return None
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    graph = onnx.load_from_string(content).graph
    # integer initializers are shapes and indices the exporter wrote, not weights
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in graph.initializer if t.data_type in floating))


def _session(runtime: Any, content: bytes, threads: int) -> Any:
    options = runtime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ONNX Runtime's warnings would interleave with the progress bars
    # ONNX Runtime's threads otherwise spin between runs, taking the cores from the torch work around each
    # batch (perturbing, scoring): the sweep ran about 25 % faster without it on 2 cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return runtime.InferenceSession(content, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxModel(nn.Module):
    """An ONNX file behind nn.Module's interface: (N, 1, 28, 28) in [0, 1] to (N, 10) float32 scores."""

    compilable = False  # torch.compile cannot see into ONNX Runtime
    runs_in_torch = False  # nor does autocast reach it: it computes in the file's float32

    def __init__(self, content: bytes, signature: OnnxSignature, normalize: Normalization | None) -> None:
        super().__init__()
        self.register_buffer("onnx_bytes", torch.frombuffer(bytearray(content), dtype=torch.uint8))
        self.signature = signature
        self.normalize = normalize
        self.parameter_count = initializer_count(content)
        self._runner: Any = None
        self._runner_for: int | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores for a batch, computed by ONNX Runtime on the CPU and returned on the batch's device."""
        form = InputForm(self.signature.layout, self.signature.channels, self.normalize)
        array = np.ascontiguousarray(form.arrange(images.detach()).cpu().numpy(), dtype=np.float32)
        scores = self._scores(array)
        return torch.from_numpy(scores).to(images.device)

    def _scores(self, array: np.ndarray) -> np.ndarray:
        session, fixed = self._session(), self.signature.batch
        feed = self.signature.input_name
        if fixed is None:
            return session.run([self.signature.output_name], {feed: array})[0].astype(np.float32)
        parts = []
        for start in range(0, len(array), fixed):
            chunk = array[start : start + fixed]
            padded = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), np.float32)])
            parts.append(session.run([self.signature.output_name], {feed: padded})[0][: len(chunk)])
        return np.concatenate(parts).astype(np.float32)

    def _session(self) -> Any:
        # built on first use, from the bytes as they are then, with the process's thread count then
        threads = torch.get_num_threads()
        if self._runner is None or self._runner_for != threads:
            content = self.onnx_bytes.cpu().numpy().tobytes()
            self._runner, self._runner_for = _session(onnx_runtime(), content, threads), threads
        return self._runner

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._runner = None  # the bytes may have changed: the next call builds a session from them

    def __getstate__(self) -> dict[str, Any]:
        # an InferenceSession neither pickles nor deep-copies: a copy builds its own on first use
        state = self.__dict__.copy()
        state["_runner"], state["_runner_for"] = None, None
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxModel:
        clone = copy.copy(self)
        memo[id(self)] = clone
        clone.__dict__ = copy.deepcopy(self.__getstate__(), memo)
        return clone


@dataclass(frozen=True)
class OnnxBuilder:
    """Builds the OnnxModel of one file's bytes (picklable: it travels to Ray workers with the model spec)."""

    content: bytes
    signature: OnnxSignature
    normalize: Normalization | None

    def __call__(self) -> OnnxModel:
        return OnnxModel(self.content, self.signature, self.normalize)


__all__ = ["INSTALL", "Normalization", "OnnxBuilder", "OnnxModel", "OnnxSignature", "onnx_runtime", "read_onnx"]
