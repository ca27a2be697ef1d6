"""What a received report's run.json would run on this machine, found before anything runs.

A report folder is data: people send them, attach them to papers and upload them to leaderboards.
Its run.json records the experiment's config, and a config can name code: a model's `factory:`
is imported (its module's top level runs) and called. `reproduce` refuses such a report unless the
user passes --trust-code; `report`, `compare` and `leaderboard` never build models at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustbench_fmnist.config import ExperimentConfig, ModelSpec, shorten
from robustbench_fmnist.errors import UntrustedCodeError
from robustbench_fmnist.models.timm_models import timm_architecture

TRUST_FLAG = "--trust-code"
# timm.create_model's kwarg that loads a file into the model: the timm and torch versions pyproject allows
# include ones whose torch.load unpickles in full (timm's pretrained files are refused: check_timm_name)
TIMM_FILE_KWARGS = ("checkpoint_path",)


@dataclass(frozen=True)
class NamedCode:
    """One place a config names code this process would run: the key, and what running it does."""

    where: str  # e.g. models[0].factory
    what: str  # e.g. imports module 'evilmod' and calls build

    def __str__(self) -> str:
        return f"{self.where} {self.what}"


def named_code(config: ExperimentConfig) -> list[NamedCode]:
    """Every place `config` names code to import or a file to unpickle, in the order of its keys.

    Registered names (models, perturbations, augmentations, backends, executors, timm
    architectures) pick code that is installed here, so they name nothing new; a `factory:`
    names a module, and a timm model's file kwargs name a file timm may unpickle.
    """
    return [code for index, spec in enumerate(config.models) for code in spec_code(spec, f"models[{index}]")]


def spec_code(spec: ModelSpec, where: str) -> list[NamedCode]:
    """The code one model spec names (its factory, a file timm would load), `where` naming the spec."""
    found = []
    if spec.factory is not None:
        module, _, function = spec.factory.partition(":")
        found.append(NamedCode(f"{where}.factory", f"imports module {module!r} and calls {function}"))
    if timm_architecture(spec.architecture or spec.name) is not None:
        for key in TIMM_FILE_KWARGS:
            if spec.kwargs.get(key):
                file = shorten(spec.kwargs[key])
                found.append(NamedCode(f"{where}.kwargs.{key}", f"has timm load {file} (torch.load)"))
    return found


def check_received(config: ExperimentConfig, source: str, *, trust_code: bool) -> list[NamedCode]:
    """The code a received report's config names; UntrustedCodeError (one line) when there is any and not trusted."""
    found = named_code(config)
    if found and not trust_code:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UntrustedCodeError(
            f"{source}: {found[0]}{more}; a received report's code is never run: read it, and pass "
            f"{TRUST_FLAG} to import and run it"
        )
    return found
