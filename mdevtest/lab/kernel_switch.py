"""A real kernel switch for the nested lab: another Debian kernel as a provisioning build.

The nested lab's hosts run the kernel of their image (:mod:`mdevtest.lab.nested_image`).
:func:`alternate_kernel` finds another build of the same flavour in the same Debian suite (the
suite keeps the previous point release's kernel beside the current one; ``trixie`` had
6.12.107 and 6.12.117 on 2026-12-05), with its headers, on the mirror's package index, and
:func:`switch_spec` writes the :class:`~mdevtest.inventory.ProvisionSpec` that puts it on a
host: the four packages (with the index's sha256), the mtty sample's source, a build of
``mtty.ko`` against the new headers, a kexec into the new kernel with ``mdt.mtty=0`` (the
image's init must not load the old kernel's module) and ``mtty`` loaded after the boot. What
``mdevtest provision`` does with it is what a lab's nightly job does with tonight's kernel.
"""

from __future__ import annotations

import lzma
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from mdevtest.errors import LabError
from mdevtest.lab.nested_image import SUITE, HostImage

_IMAGE = re.compile(r"linux-image-(?P<release>(?P<upstream>[0-9][0-9.]*)\+deb\d+-amd64)")


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    url: str
    sha256: str


@dataclass(frozen=True)
class KernelBuild:
    """One Debian kernel and what building a module for it needs."""

    release: str
    image: Deb
    headers: tuple[Deb, ...]


def _stanzas(index: str) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for stanza in index.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.M))
        if "Package" in fields:
            found[fields["Package"]] = fields  # the last of a package wins: the index lists one
    return found


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release.split("+", 1)[0]))


def alternate_kernel(
    current_release: str, *, mirror: str, suite: str = SUITE, timeout: float = 120.0
) -> KernelBuild:
    """The newest ``linux-image-*-amd64`` of ``suite`` other than ``current_release``, with its
    headers; :class:`LabError` when the suite has no other one."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/main/binary-amd64/Packages.xz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            index = lzma.decompress(resp.read()).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, lzma.LZMAError) as exc:
        raise LabError(f"cannot read {url}: {exc}") from exc
    packages = _stanzas(index)
    releases = sorted(
        {
            m["release"]
            for p in packages
            if (m := _IMAGE.fullmatch(p)) and m["release"] != current_release
        },
        key=_version_key,
        reverse=True,
    )
    base = mirror.rstrip("/")

    def deb(name: str) -> Deb:
        f = packages.get(name)
        if f is None:
            raise LabError(f"{suite} on {mirror} has no package {name}")
        return Deb(name, f["Version"], f"{base}/{f['Filename']}", f["SHA256"])

    for release in releases:
        abi = release.removesuffix("-amd64")  # 6.12.107+deb13
        try:
            return KernelBuild(
                release=release,
                image=deb(f"linux-image-{release}"),
                headers=(
                    deb(f"linux-headers-{release}"),
                    deb(f"linux-headers-{abi}-common"),
                    deb(f"linux-kbuild-{abi}"),
                ),
            )
        except LabError:
            continue  # e.g. headers of that build already gone from the mirror
    raise LabError(
        f"{suite} on {mirror} has no amd64 kernel other than {current_release} with its headers; "
        "a kernel switch needs a second one"
    )


def switch_spec(host: HostImage, build: KernelBuild, out: Path) -> Path:
    """Write the provision spec that switches a nested host to ``build`` (see the module
    docstring) to ``out`` and return it."""
    src = host.mtty_source / "mtty.c"
    kbuild = out.parent / "mtty.Kbuild"
    kbuild.write_text("obj-m := mtty.o\n")
    release = build.release
    spec = {
        "artifacts": [
            *(
                {"kind": "deb", "source": d.url, "sha256": d.sha256}
                for d in (build.image, *build.headers)
            ),
            {"kind": "file", "source": str(src), "dest": "/root/mdt-mtty/mtty.c"},
            {"kind": "file", "source": str(kbuild), "dest": "/root/mdt-mtty/Kbuild"},
        ],
        "commands": [
            f"make -C /lib/modules/{release}/build M=/root/mdt-mtty modules",
            f"install -D -m 0644 /root/mdt-mtty/mtty.ko /lib/modules/{release}/extra/mtty.ko",
            f"depmod {release}",
        ],
        "kernel": {"release": release, "method": "kexec", "args_add": ["mdt.mtty=0"]},
        "modules": [{"name": "mtty"}],
        "expect_qemu": "10.0",
        "boot_timeout_s": 600,
    }
    out.write_text(
        f"# Switch a nested-lab host to {release} (written by mdevtest.lab.kernel_switch)\n"
        + yaml.safe_dump(spec, sort_keys=False)
    )
    return out
