"""The wheel the images install holds every package of the tree: setuptools takes only the packages
pyproject.toml lists, while the tests' editable install imports from the folders and never notices one
missing (pulsestack.alerts was, and every service container failed at import in the swarm proof)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_in_the_wheel() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {"pulsestack": ROOT / "pulsestack", **{name: ROOT / path for name, path in
                                                     setuptools["package-dir"].items()}}
    found = set()
    for top, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder)
            found.add(".".join((top, *relative.parts)))
    assert found - listed == set(), "packages missing from pyproject.toml's [tool.setuptools] packages"
