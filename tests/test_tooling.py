"""The lock file installs what pyproject.toml asks for: a dependency added or narrowed there
without `make lock` is caught here, not on someone else's fresh clone."""

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.programs import ROOT

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.MULTILINE)


def locked_versions() -> dict[str, str]:
    text = (ROOT / "requirements-dev.txt").read_text()
    return {canonicalize_name(name): version for name, version in _PIN.findall(text)}


def test_the_lock_pins_every_dependency_of_pyproject_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]
    locked = locked_versions()
    assert len(locked) > len(wanted)  # the dependencies' dependencies are pinned too
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in requirements-dev.txt: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements-dev.txt pins {name}=={locked[name]}, outside {requirement}: run make lock"
        )
