"""The documentation site builds with --strict, and its generated references hold every key and command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustbench_fmnist.cli import build_parser
from robustbench_fmnist.config import ExperimentConfig, ModelSpec

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                                reason="the docs extra is not installed (make setup installs it)")  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "-d", str(folder)], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_the_yaml_reference_lists_every_key_of_the_schema(site: Path) -> None:
    page = (site / "reference" / "yaml" / "index.html").read_text()
    for model in (ExperimentConfig, ModelSpec):
        for key in model.model_fields:
            assert f"<code>{key}</code>" in page, key


def test_the_cli_reference_lists_every_command(site: Path) -> None:
    page = (site / "reference" / "cli" / "index.html").read_text()
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert len(commands) >= 9
    for name in commands:
        assert f"<code>{name}</code>" in page, name


def test_the_api_page_renders_the_docstrings(site: Path) -> None:
    page = (site / "reference" / "api" / "index.html").read_text()
    assert "run_experiment" in page and "One model spec checked" not in page  # only the listed functions
    assert "parse_config" in page
