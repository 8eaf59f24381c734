"""The members of the archive that carries the stack's files to the manager (tasks/files.yml)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any


def archive_members(files: list[str]) -> list[str]:
    """The files and every folder above them, each once, parents first.

    tar packs them without recursion (a folder holds more than the stack needs), so the folders are
    members of their own: they keep the archive's modes and owner on the manager.
    """
    members = set()
    for name in files:
        path = PurePosixPath(name)
        members.add(str(path))
        members.update(str(parent) for parent in path.parents if str(parent) != ".")
    # Sorted by name, a folder comes before what it holds; the same files always give the same archive.
    return sorted(members)


class FilterModule:
    """Ansible's entry point for the filters of this role."""

    def filters(self) -> dict[str, Any]:
        return {"stack_archive_members": archive_members}
