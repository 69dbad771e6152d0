"""Guest images as a typed concept: inventory kinds, what they resolve to, how QEMU boots them,
and the qemu-guest-agent protocol (against a fake agent on a socket pair)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mdevtest.errors import GuestError, MachineError
from mdevtest.guest.qga import AgentError, GuestAgent
from mdevtest.inventory import DiskImage, LabImage, describe, load_inventory
from mdevtest.qemu.cmdline import (
    AGENT_PORT,
    CONTROL_PORT,
    DiskAttach,
    MachinePaths,
    MachineSpec,
    build_argv,
    prepare_script,
)
from mdevtest.testbed import resolve_image

REPO = Path(__file__).resolve().parents[2]

BASE = """\
version: 1
name: img-lab
hosts:
  - name: host-a
    address: 10.0.0.1
    ssh: {key_file: /k}
  - name: host-b
    address: 10.0.0.2
    ssh: {key_file: /k}
pairs:
  - {source: host-a, destination: host-b, migration_address: 10.1.0.2}
guest:
  image:
"""


def inventory_text(image: str) -> str:
    return BASE + textwrap.indent(textwrap.dedent(image), "    ")


def load(tmp_path: Path, image: str) -> Any:
    path = tmp_path / "lab.yaml"
    path.write_text(inventory_text(image))
    return load_inventory(path)


def cli_check(tmp_path: Path, image: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "lab.yaml"
    path.write_text(inventory_text(image))
    return subprocess.run(
        [sys.executable, "-m", "mdevtest.cli", "inventory", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- inventory -------------------------------------------------------------------------------


def test_the_desktop_lab_inventory_loads_and_describes_its_image() -> None:
    inv = load_inventory(REPO / "inventory" / "local-lab-desktop.yaml")
    assert isinstance(inv.guest.image, LabImage)
    assert inv.guest.image.kind == "lab-desktop"
    assert "lab-desktop" in describe(inv)
    assert "uefi boot" in describe(inv)


def test_a_disk_image_gets_uefi_agent_and_probe_by_default(tmp_path: Path) -> None:
    inv = load(tmp_path, "kind: disk\npath: guest.qcow2\n")
    image = inv.guest.image
    assert isinstance(image, DiskImage)
    assert (image.firmware, image.agent, image.probe, image.format) == ("uefi", True, True, "qcow2")
    assert image.path == tmp_path / "guest.qcow2"
    text = describe(inv)
    assert "uefi firmware, boots uefi from the disk" in text
    assert "qemu-guest-agent" in text
    assert "probe agent deployed" in text


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("kind: disk\npath: g.qcow2\nkernel: vmlinuz\n", "kernel and initrd go together"),
        ("kind: disk\npath: g.qcow2\nappend: quiet\n", "append needs kernel and initrd"),
        ("kind: disk\npath: g.qcow2\nagent: false\n", "probe: true needs agent: true"),
        ("kind: disk\npath: g.qcow2\nfirmware: coreboot\n", "must be one of 'bios', 'uefi'"),
        ("kind: disk\npath: g.qcow2\nsha256: abc\n", "sha256"),
        ("kind: lab-synthetic\nfirmware: uefi\n", "firmware applies to disk images"),
        ("kind: lab-mtty\nfirmware: uefi\n", "use kind lab-mtty-uefi"),
        ("kind: lab-mtty-uefi\nfirmware: bios\n", "boots through UEFI only"),
        ("kind: disk\npath: g.qcow2\nformat: vmdk\n", "must be one of 'qcow2', 'raw'"),
    ],
)
def test_bad_image_combinations_are_clear_errors_with_exit_3(
    tmp_path: Path, image: str, expected: str
) -> None:
    res = cli_check(tmp_path, image)
    assert res.returncode == 3, res.stdout + res.stderr
    message = res.stdout + res.stderr
    assert expected in message
    assert "guest.image" in message
    assert "Traceback" not in message


# -- what an image resolves to -------------------------------------------------------------


def test_a_disk_image_resolves_with_its_digest_and_deploys_the_probe(tmp_path: Path) -> None:
    (tmp_path / "guest.qcow2").write_bytes(b"disk bytes")
    inv = load(tmp_path, "kind: disk\npath: guest.qcow2\n")
    image = resolve_image(inv)
    assert image.disk == tmp_path / "guest.qcow2"
    assert image.disk_sha256 == hashlib.sha256(b"disk bytes").hexdigest()
    assert (image.agent, image.probe, image.ready_marker, image.boots) == (
        True,
        "deploy",
        None,
        "uefi disk",
    )


def test_a_disk_whose_sha256_differs_from_the_inventory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "guest.qcow2").write_bytes(b"changed")
    inv = load(tmp_path, f"kind: disk\npath: guest.qcow2\nsha256: '{'0' * 64}'\n")
    with pytest.raises(MachineError, match=r"has sha256 .* the inventory says 0000"):
        resolve_image(inv)


# -- the command line ----------------------------------------------------------------------


def spec(**kw: Any) -> MachineSpec:
    base: dict[str, Any] = {
        "name": "vm1", "memory_mib": 1024, "vcpus": 1, "kernel": None, "initrd": None, "append": "",
    }  # fmt: skip
    base.update(kw)
    return MachineSpec(**base)


def test_a_uefi_disk_guest_boots_from_its_overlay_with_agent_and_control_ports() -> None:
    paths = MachinePaths("/s/vms/vm1")
    s = spec(
        disk=DiskAttach("/s/images/d/disk.qcow2"),
        firmware="uefi",
        ovmf_code="/fw/CODE.fd",
        ovmf_vars="/fw/VARS.fd",
        agent=True,
        control="vport",
        pattern_disk="/s/images/pattern.img",
    )
    argv = build_argv("qemu-system-x86_64", s, paths, "tag")
    joined = " ".join(argv)
    assert "-kernel" not in argv
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd" in joined
    assert f"if=pflash,format=raw,unit=1,file={paths.ovmf_vars}" in joined
    assert f"file={paths.disk_overlay},if=none,id=disk0,format=qcow2,readonly=on" in joined
    assert f"name={AGENT_PORT}" in joined
    assert f"name={CONTROL_PORT}" in joined
    assert "isa-serial" not in joined
    # the guest's own disk is vda: its device comes before the pattern disk's
    assert joined.index("drive=disk0") < joined.index("drive=pat0")
    prep = prepare_script(s, paths)
    assert "qemu-img create -q -f qcow2 -F qcow2 -b /s/images/d/disk.qcow2" in prep
    assert f"cp /fw/VARS.fd {paths.ovmf_vars}" in prep


def test_the_initramfs_guest_keeps_its_uart_control_channel_and_no_extra_files() -> None:
    paths = MachinePaths("/s/vms/vm1")
    s = spec(kernel="/k", initrd="/i", append="console=ttyS0")
    argv = build_argv("qemu", s, paths, "tag")
    assert argv[argv.index("-kernel") + 1] == "/k"
    assert "isa-serial,chardev=ctl0,index=1" in argv
    assert "virtio-serial-pci,id=vser0" not in argv
    assert prepare_script(s, paths) == ""


# -- the agent protocol --------------------------------------------------------------------


class FakeAgent:
    """qemu-ga's wire behaviour: 0xFF before a guest-sync-delimited reply, JSON lines."""

    def __init__(self, sock: socket.socket, replies: dict[str, Any], junk: bytes = b"") -> None:
        self.sock = sock
        self.replies = replies
        self.junk = junk
        self.seen: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        buf = b""
        with self.sock:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    self.seen.append(msg)
                    cmd = msg["execute"]
                    if cmd == "guest-sync-delimited":
                        reply = {"return": msg["arguments"]["id"]}
                        out = self.junk + b"\xff" + json.dumps(reply).encode()
                    elif cmd in self.replies:
                        out = json.dumps(self.replies[cmd]).encode()
                    else:
                        out = json.dumps(
                            {"error": {"class": "CommandNotFound", "desc": f"{cmd} unknown"}}
                        ).encode()
                    self.sock.sendall(out + b"\n")


class FakeBridge:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def stderr(self) -> str:
        return ""

    def __enter__(self) -> FakeBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


class FakeMachine:
    """What GuestAgent needs of a RemoteMachine: a label, paths, and a remote that bridges."""

    def __init__(self, replies: dict[str, Any], junk: bytes = b"") -> None:
        self.label = "host-a/vm1"
        self.paths = MachinePaths("/s/vms/vm1")
        self.replies = replies
        self.junk = junk
        self.agents: list[FakeAgent] = []
        self.remote = self

    def open_unix_socket(self, path: str, timeout: float) -> FakeBridge:
        assert path == self.paths.qga_sock
        ours, theirs = socket.socketpair()
        self.agents.append(FakeAgent(theirs, self.replies, self.junk))
        return FakeBridge(ours)


@pytest.fixture
def machine() -> Iterator[FakeMachine]:
    return FakeMachine({"guest-ping": {"return": {}}, "guest-info": {"return": {"version": "10.0"}}},
                      junk=b'{"return": {"stale": 1}}\n')  # fmt: skip


def test_agent_resynchronises_then_returns_the_reply(machine: FakeMachine) -> None:
    agent = GuestAgent(lambda: machine)  # type: ignore[arg-type, return-value]
    assert agent("guest-info", None, 5.0) == {"version": "10.0"}
    seen = machine.agents[0].seen
    assert [m["execute"] for m in seen] == ["guest-sync-delimited", "guest-info"]


def test_agent_errors_carry_class_and_description(machine: FakeMachine) -> None:
    agent = GuestAgent(lambda: machine)  # type: ignore[arg-type, return-value]
    with pytest.raises(AgentError, match="CommandNotFound: guest-nope unknown") as info:
        agent.execute("guest-nope", timeout=5.0)
    assert info.value.error_class == "CommandNotFound"


def test_agent_follows_the_guest_to_the_destination(machine: FakeMachine) -> None:
    destination = FakeMachine({"guest-ping": {"return": {}}})
    destination.label = "host-b/in2"
    where: list[Any] = [machine]
    agent = GuestAgent(lambda: where[0])
    agent.execute("guest-ping", timeout=5.0)
    where[0] = destination  # what Guest.moved_to does
    agent.execute("guest-ping", timeout=5.0)
    assert len(machine.agents) == 1
    assert len(destination.agents) == 1


def test_a_silent_agent_times_out_naming_the_port() -> None:
    class Silent(FakeMachine):
        def open_unix_socket(self, path: str, timeout: float) -> FakeBridge:
            ours, theirs = socket.socketpair()
            self.keep = theirs  # never answers
            return FakeBridge(ours)

    agent = GuestAgent(lambda: Silent({}))  # type: ignore[arg-type, return-value]
    with pytest.raises(GuestError, match="no reply from qemu-guest-agent to guest-ping"):
        agent.execute("guest-ping", timeout=1.5)
