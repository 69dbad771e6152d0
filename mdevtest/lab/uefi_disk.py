"""A UEFI-bootable GPT disk for the labs' guest images, made without root or loop devices.

:func:`write_uefi_disk` lays out: 1 MiB, an EFI system partition (FAT32, made with ``mkfs.fat``
and filled with ``mtools``) holding systemd-boot as the removable-media loader
(``EFI/BOOT/BOOTX64.EFI``), the kernel, the initrd and one loader entry, then optionally an
already made root file system image, then 1 MiB for the backup GPT; the table is written by
``sfdisk`` and the result converted to qcow2 (the base image each host's per-guest overlay
points at). OVMF finds the loader on its own (no boot entry in the VARS is needed).

Used by the desktop image (ESP + ext4 root) and the nested lab's mtty disk guest (ESP only:
its root is the initramfs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["EspContents", "write_uefi_disk"]

_ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
_LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
_MIB = 1 << 20


class _Runs(Protocol):
    """The image builders' bounded command runner (``nested_image`` ``run``)."""

    def run(
        self,
        step: str,
        cmd: list[str | Path],
        *,
        env: dict[str, str] | None = ...,
        hint: str = ...,
    ) -> str: ...


@dataclass(frozen=True)
class EspContents:
    """What goes on the ESP: systemd-boot (``loader``), the kernel, the initrd, and one entry."""

    loader: Path
    kernel: Path
    initrd: Path
    append: str
    title: str
    size_mib: int = 128


def write_uefi_disk(
    runner: _Runs, work: Path, esp: EspContents, out: Path, *, root_image: Path | None = None
) -> None:
    """Write the qcow2 disk ``out`` (GPT: the ESP, then ``root_image`` when given), using
    ``work`` for the intermediate files (removed)."""
    fat = work / "esp.img"
    runner.run(
        "make the EFI system partition",
        ["mkfs.fat", "-F", "32", "-n", "MDT-ESP", "-C", fat, str(esp.size_mib * 1024)],
        hint="apt-get install dosfstools",
    )
    entry = work / "mdt.conf"
    entry.write_text(f"title {esp.title}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {esp.append}\n")
    loader_conf = work / "loader.conf"
    loader_conf.write_text("default mdt.conf\ntimeout 0\n")
    mtools = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    runner.run(
        "make ESP folders",
        ["mmd", "-i", fat, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"],
        env=mtools,
        hint="apt-get install mtools",
    )
    for src, dst in (
        (esp.loader, "::/EFI/BOOT/BOOTX64.EFI"),
        (esp.kernel, "::/vmlinuz"),
        (esp.initrd, "::/initrd.img"),
        (loader_conf, "::/loader/loader.conf"),
        (entry, "::/loader/entries/mdt.conf"),
    ):
        runner.run(f"copy {dst} to the ESP", ["mcopy", "-i", fat, src, dst], env=mtools)
    entry.unlink()
    loader_conf.unlink()

    esp_start = _MIB
    root_start = esp_start + esp.size_mib * _MIB
    root_size = root_image.stat().st_size if root_image is not None else 0
    raw = work / "disk.raw"
    with raw.open("wb") as fh:
        fh.truncate(root_start + root_size + _MIB)
    table = (
        "label: gpt\n"
        f"start={esp_start // 512}, size={esp.size_mib * _MIB // 512}, type={_ESP_TYPE}, name=mdt-esp\n"
    )
    if root_image is not None:
        table += (
            f"start={root_start // 512}, size={root_size // 512}, type={_LINUX_TYPE}, name=mdt-root\n"
        )
    (work / "table.sfdisk").write_text(table)
    runner.run(
        "write the partition table",
        ["sh", "-c", 'sfdisk --no-reread --no-tell-kernel -q "$1" < "$2"', "sh", raw,
         work / "table.sfdisk"],
        hint="apt-get install fdisk",
    )  # fmt: skip
    (work / "table.sfdisk").unlink()
    parts = [(fat, esp_start)] + ([(root_image, root_start)] if root_image is not None else [])
    for part, offset in parts:
        runner.run(
            f"copy {part.name} into the disk",
            ["dd", f"if={part}", f"of={raw}", "bs=1M", f"seek={offset // _MIB}",
             "conv=notrunc,sparse", "status=none"],
        )  # fmt: skip
        part.unlink()
    runner.run(
        "convert the disk to qcow2",
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out],
        hint="apt-get install qemu-utils",
    )
    raw.unlink()
