"""pyproject.toml and requirements.txt pin the same dependencies, and the
version has one home."""

import re
import tomllib

from tests.support import REPO


def test_dependencies_are_pinned_as_requirements_txt_pins_them():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = (REPO / "requirements.txt").read_text().splitlines()
    pinned = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert set(project["dependencies"]) == pinned
    assert all("==" in requirement for requirement in project["dependencies"])


def test_bench_extra_matches_requirements_bench_txt():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = (REPO / "requirements-bench.txt").read_text().splitlines()
    extra = {line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))}
    assert set(project["optional-dependencies"]["bench"]) == extra


def test_version_is_read_from_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    init = (REPO / "geventq" / "__init__.py").read_text()
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', init, re.M)
