"""The one inference path: a trained model prepared to predict, as evaluation, `bench` and adaptation run it.

Preparing means: BatchNorm folded into the convolutions before it, the memory layout set,
autocast at the evaluation's precision, and on the CPU, when it pays, torch.compile with the
conv-pool rewrite of models.fusion. So the sweep measures the same model `bench` measures.

Evaluation must stay exact: a compiled model is checked against the eager float32 model on the
first batch it sees, and one whose predicted classes differ is not used (a warning says so).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from robustbench_fmnist.models.fusion import ConvPoolReLU, fuse_conv_pool, inference_copy

log = logging.getLogger(__name__)

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Compile = Literal["auto", "always", "never"]
# compiling the baseline takes about 3 s on 2 cores and saves about 20 µs an image: below this many
# images per prepared model the compile costs more than it saves (issue 16's closing note)
COMPILE_MIN_IMAGES = 100_000


def memory_format_of(channels_last: bool) -> torch.memory_format:
    """torch's memory format for the `channels_last` setting."""
    return torch.channels_last if channels_last else torch.contiguous_format


def compile_pays(fused: nn.Module, device: torch.device, images: int, compile: Compile) -> bool:
    """Whether to compile: always/never as asked; auto compiles a CPU model with a fused first block for many images.

    `fused` is the model after `fuse_conv_pool`. The gain measured on 2 cores comes from the fused
    conv-pool block (baseline 26k -> 57k images/s, LeNet-5 67k -> 108k); models without one gained
    0-25 % for 3-15 s of compiling, and ConvNeXt lost.
    """
    if compile != "auto":
        return compile == "always"
    fused_block = any(isinstance(m, ConvPoolReLU) for m in fused.modules())
    return device.type == "cpu" and images >= COMPILE_MIN_IMAGES and fused_block


@dataclass
class PreparedModel:
    """A model ready to predict: call it on a batch (N, 1, 28, 28) on its device to get logits."""

    module: nn.Module
    device: torch.device
    precision: str
    memory_format: torch.memory_format
    compiled: bool
    eager: nn.Module | None = field(
        default=None, repr=False
    )  # the folded eager model a compiled one is checked against
    checked: bool = False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.contiguous(memory_format=self.memory_format)
        if self.compiled and not self.checked:
            return self._first_compiled_call(batch)
        with self.autocast():
            return self.module(batch)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast at the prepared precision (nothing for float32)."""
        dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            yield

    def _first_compiled_call(self, batch: torch.Tensor) -> torch.Tensor:
        """Compile (torch.compile is lazy) and check the predicted classes against eager; fall back to eager."""
        eager, self.eager, self.checked = self.eager, None, True
        assert eager is not None
        with self.autocast():
            expected = eager(batch)
            try:
                logits = self.module(batch)
            except Exception as exc:  # no C++ compiler, an op inductor cannot lower: eager is still exact
                log.warning("torch.compile failed (%s: %s); evaluating eager", type(exc).__name__, str(exc)[:200])
                self.module, self.compiled = eager, False
                return expected
        if not torch.equal(logits.float().argmax(1), expected.float().argmax(1)):
            log.warning("the compiled model's predicted classes differ from eager on a batch; evaluating eager")
            self.module, self.compiled = eager, False
            return expected
        return logits


def prepare_for_inference(
    model: nn.Module,
    device: torch.device,
    *,
    precision: str = "float32",
    channels_last: bool = True,
    compile: Compile = "never",
    images: int = 0,
) -> PreparedModel:
    """`model` prepared for inference on `device` (a copy: the caller's model is not touched).

    `images` is how many images will go through the prepared model, which decides whether
    compile "auto" pays. Compiling fixes one batch shape per compiled graph (dynamic=False).
    """
    memory_format = memory_format_of(channels_last)
    folded = inference_copy(model).to(device=device, memory_format=memory_format).eval()
    if compile == "never" or not getattr(model, "compilable", True):  # an ONNX Runtime model: nothing to compile
        return PreparedModel(folded, device, precision, memory_format, compiled=False)
    # the rewrite is measured only on the CPU; on CUDA cuDNN's conv runs unchanged
    fused = fuse_conv_pool(folded, memory_format) if device.type == "cpu" else folded
    if not compile_pays(fused, device, images, compile):
        return PreparedModel(folded, device, precision, memory_format, compiled=False)
    # dynamo counts recompiles per code object across modules; past its limit it silently runs
    # eager, so each compiled model starts from a clean cache
    torch._dynamo.reset()
    compiled = torch.compile(fused, dynamic=False)
    return PreparedModel(compiled, device, precision, memory_format, compiled=True, eager=folded)
