"""Provisioning's pure parts: command lines, verification, the spec file's errors, records."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdevtest.errors import InventoryError, ProvisionError
from mdevtest.host import describe_record
from mdevtest.inventory import Artifact, load_provision_spec
from mdevtest.provision import HostBuild, fetch, new_cmdline, verify_problems


def test_new_cmdline_drops_removed_and_replaced_arguments_and_boot_image() -> None:
    current = "BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet xe.max_vfs=2 splash"
    got = new_cmdline(current, ["xe.max_vfs=4", "intel_iommu=on"], ["quiet", "splash=1"])
    assert got == "root=/dev/vda ro splash xe.max_vfs=4 intel_iommu=on"


def _spec(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return load_provision_spec(path)


def test_verification_names_every_difference(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "kernel: {release: 6.12.107+deb13-amd64, args_add: [mdt.mtty=0], args_remove: [quiet]}\n"
        "modules: [{name: mtty}]\nexpect_qemu: '10.0'\n",
    )
    build = HostBuild(
        release="6.12.117+deb13-amd64",
        cmdline="root=/dev/vda quiet",
        boot_id="b",
        qemu="QEMU emulator version 9.2.1",
        modules={"mtty": {"srcversion": "AAA", "version": "0.1", "state": "loaded"}},
    )
    problems = verify_problems(spec, build, {"mtty": "BBB"})
    text = "\n".join(problems)
    assert "uname -r is '6.12.117+deb13-amd64', the build is '6.12.107+deb13-amd64'" in text
    assert "lacks 'mdt.mtty=0'" in text
    assert "still has 'quiet'" in text
    assert "loaded srcversion AAA, the deployed file's is BBB" in text
    assert "does not contain '10.0'" in text
    good = HostBuild(
        "6.12.107+deb13-amd64", "root=/dev/vda mdt.mtty=0", "c", "QEMU emulator version 10.0.13",
        {"mtty": {"srcversion": "BBB", "version": "", "state": "loaded"}},
    )  # fmt: skip
    assert verify_problems(spec, good, {"mtty": "BBB"}) == []


def test_a_bad_spec_file_names_the_file_and_each_field(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as err:
        _spec(
            tmp_path,
            "artifacts:\n  - {kind: file, source: ./x.ko}\n  - {kind: deb, source: a.deb, dest: /x}\n"
            "kernel: {release: '', method: grub}\nmodules: [{name: 'a b'}]\n",
        )
    text = str(err.value)
    assert str(tmp_path / "spec.yaml") in text
    for field in ("artifacts[0]", "artifacts[1]", "kernel.release", "kernel.method", "modules[0].name"):
        assert field in text, text
    with pytest.raises(InventoryError, match="nothing to provision"):
        _spec(tmp_path, "step_timeout_s: 10\n")
    with pytest.raises(InventoryError, match="top level is a list"):
        _spec(tmp_path, "- kernel\n")


def test_an_inventory_style_file_and_relative_paths(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "provision:\n  artifacts: [{kind: file, source: m.ko, dest: /m.ko}]\n")
    assert spec.artifacts[0].source == str(tmp_path / "m.ko")


def test_fetch_checks_the_file_and_its_digest(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="no such file on the controller"):
        fetch(Artifact(kind="file", source=str(tmp_path / "missing"), dest="/x"))
    path = tmp_path / "m.ko"
    path.write_bytes(b"module")
    got = fetch(Artifact(kind="file", source=str(path), dest="/x"))
    assert got.remote_name.endswith("-m.ko")
    with pytest.raises(ProvisionError, match="sha256 is"):
        fetch(Artifact(kind="file", source=str(path), dest="/x", sha256="0" * 64))
    with pytest.raises(ProvisionError, match="cannot download"):
        fetch(Artifact(kind="deb", source="http://127.0.0.1:9/none.deb"), cache=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.part"))


def test_describe_record_is_one_line() -> None:
    record = {
        "id": "0e8ad6106bba",
        "status": "provisioned",
        "after": {"release": "6.12.107+deb13-amd64"},
        "artifacts": [{"name": "linux-image.deb"}],
        "finished_at": "2026-12-05T11:03:55Z",
    }
    assert describe_record(record) == (
        "provisioned 0e8ad6106bba: kernel 6.12.107+deb13-amd64, linux-image.deb (2026-12-05T11:03:55Z)"
    )


def test_a_guest_iommu_goes_before_every_other_device() -> None:
    from mdevtest.qemu.cmdline import hoist_iommu

    extra = ["-device", "vfio-pci,sysfsdev=/x,id=vgpu0", "-device", "intel-iommu,caching-mode=on", "-S"]
    assert hoist_iommu(extra) == (
        ["-device", "intel-iommu,caching-mode=on"],
        ["-device", "vfio-pci,sysfsdev=/x,id=vgpu0", "-S"],
    )


def test_postcopy_is_a_policy_option() -> None:
    from mdevtest.migration import MigrationPolicy

    policy = MigrationPolicy.from_options(postcopy=True)
    assert {"capability": "postcopy-ram", "state": True} in policy.all_capabilities()
