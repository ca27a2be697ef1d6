"""The docs' preview pictures: one per perturbation and per adversary space, each what `preview` draws now."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustbench_fmnist.cli import main
from robustbench_fmnist.perturbations import PERTURBATIONS
from tests.conftest import REAL_DATA, requires_real_data

ROOT = Path(__file__).resolve().parent.parent
PICTURES = ROOT / "docs" / "img"
STALE = "is stale: regenerate the docs' pictures with `make docs-pictures`"


def test_every_perturbation_has_its_picture_on_the_perturbations_page() -> None:
    page = (ROOT / "docs" / "perturbations.md").read_text()
    for name in PERTURBATIONS.names("*"):
        assert (PICTURES / "perturbations" / f"{name}.png").is_file(), f"no picture of {name}: `make docs-pictures`"
        assert f"](img/perturbations/{name}.png)" in page, f"docs/perturbations.md does not show {name}"


def test_the_adversaries_page_shows_each_space_of_the_worst_case_reference() -> None:
    page = (ROOT / "docs" / "adversaries.md").read_text()
    for name in ("spatial", "light", "joint"):
        assert (PICTURES / "adversaries" / f"{name}.png").is_file()
        assert f"](img/adversaries/{name}.png)" in page


@requires_real_data
@pytest.mark.parametrize(
    ("argument", "folder"), [("all", "perturbations"), (str(ROOT / "experiments" / "worst_case.yaml"), "adversaries")]
)
def test_the_pictures_are_what_preview_draws_now(argument: str, folder: str, tmp_path: Path) -> None:
    assert main(["-q", "preview", argument, "--data-dir", str(REAL_DATA), "--output-dir", str(tmp_path)]) == 0
    drawn = sorted(tmp_path.glob("*.png"))
    assert drawn
    for fresh in drawn:
        committed = PICTURES / folder / fresh.name
        assert committed.is_file(), f"docs/img/{folder}/{fresh.name} is missing: `make docs-pictures`"
        assert np.array_equal(np.asarray(Image.open(fresh)), np.asarray(Image.open(committed))), f"{committed} {STALE}"
