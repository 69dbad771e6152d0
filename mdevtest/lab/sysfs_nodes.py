"""The nodes of a simulated sysfs tree: directories, symlinks and attributes (shared by
:mod:`mdevtest.lab.simsysfs` and :mod:`mdevtest.lab.simsriov`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Attr", "Dir", "Link", "Node"]


@dataclass(frozen=True)
class Dir:
    entries: tuple[str, ...]


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Attr:
    """A sysfs attribute: ``read`` None means write-only, ``writable`` False read-only."""

    read: str | None
    writable: bool = False

    @property
    def mode(self) -> int:
        return (0o444 if self.read is not None else 0) | (0o200 if self.writable else 0)


Node = Dir | Link | Attr
