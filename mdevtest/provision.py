"""Put a build on a lab's hosts, boot it, verify it runs, and take it back off (``mdevtest provision``).

A nightly job or a pre-merge run tests *a build*: tonight's kernel, host driver, QEMU or module.
:class:`HostProvisioner` puts one on a host from an inventory's ``provision:`` spec
(:class:`~mdevtest.inventory.ProvisionSpec`), in this order:

1. **record** what the host runs now (``uname -r``, ``/proc/cmdline``, boot id, QEMU version,
   the spec's modules' ``srcversion``) in ``<state_dir>/provision/record.json`` on the host,
   before anything changes, so a rollback works even after the controller died;
2. **artifacts**: fetched by the controller (:func:`fetch`; URLs cached by URL under
   :data:`ARTIFACT_CACHE`, ``sha256`` checked when given), copied to
   ``<state_dir>/provision/artifacts/``, then ``deb`` packages go in with one ``dpkg -i`` (the
   version each package had before is recorded), ``tarball`` and ``file`` artifacts are
   extracted / copied after the files they replace are saved to ``backup.tar``;
3. **commands** (e.g. build an out-of-tree module against the new kernel's headers);
4. **kernel**: ``kexec`` (``kexec -l`` + ``systemctl kexec``, or ``kexec -e`` after ``sync``
   where no systemd runs) or ``reboot`` through a one-shot boot entry (GRUB's ``grub-reboot``
   or systemd-boot's ``bootctl set-oneshot``: the next plain reboot is the old kernel); the
   command line is the running one minus ``args_remove`` plus ``args_add``; the host must then
   answer SSH with a new boot id within ``boot_timeout_s``;
5. **modules** (``rmmod`` + ``insmod``/``modprobe``) and the **after_boot** commands;
6. **verify**: ``uname -r`` is the spec's release, the command line has every added argument
   and none removed, each module's loaded ``srcversion`` is its file's, QEMU's version has
   ``expect_qemu``. Anything else is a :class:`~mdevtest.errors.ProvisionError`
   (infrastructure), and the host is rolled back.

:meth:`HostProvisioner.rollback` undoes it from the host's record: boots the recorded kernel
with the recorded command line (``kexec``; ``reboot`` removes the one-shot entry and reboots),
removes the files the build created and restores the ones it replaced, purges the packages that
were not installed before (and reinstalls an older version through apt where one was replaced),
reloads the modules that were loaded before, and verifies that the recorded kernel runs again.

:func:`provision_hosts` does this for several hosts in parallel, holding their leases (the
same leases the test processes take, so no suite runs on a host while it changes); when one host
fails, every host of the call is rolled back. What is known unproven (only the nested lab's
kexec path runs in CI) is listed in docs/provisioning.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdevtest.errors import MdevtestError, ProvisionError
from mdevtest.inventory import Artifact, Inventory, KernelBoot, ProvisionSpec
from mdevtest.remote import Remote

if TYPE_CHECKING:
    from mdevtest.testbed import Testbed

Progress = Callable[[str], None]

#: Where the controller keeps downloaded artifacts (by the sha256 of their URL).
ARTIFACT_CACHE = Path("/var/cache/mdevtest/artifacts")
#: Largest artifact the controller downloads.
MAX_ARTIFACT_BYTES = 4 << 30
#: Record statuses: the build is going on, runs, failed (not rolled back), or is gone again.
STATUSES = ("deploying", "provisioned", "failed", "rolled-back")
_BOOT_POLL_S = 3.0


def _quiet(_message: str) -> None:
    pass


# -- the controller side: artifacts -----------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """An artifact as the controller has it."""

    artifact: Artifact
    path: Path
    sha256: str

    @property
    def remote_name(self) -> str:
        return f"{self.sha256[:12]}-{self.artifact.name}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(artifact: Artifact, *, cache: Path = ARTIFACT_CACHE, timeout: float = 600.0) -> Fetched:
    """The artifact on the controller: a local file as it is, a URL downloaded once into
    ``cache`` (a partial download never counts). Raises :class:`ProvisionError` naming the
    artifact and what to do."""
    source = artifact.source
    if source.startswith(("http://", "https://")):
        cache.mkdir(parents=True, exist_ok=True)
        target = cache / f"{hashlib.sha256(source.encode()).hexdigest()[:16]}-{artifact.name}"
        if not target.is_file():
            partial = target.with_name(target.name + ".part")
            try:
                with urllib.request.urlopen(source, timeout=timeout) as resp, partial.open("wb") as out:
                    size = 0
                    while chunk := resp.read(1 << 20):
                        size += len(chunk)
                        if size > MAX_ARTIFACT_BYTES:
                            raise ProvisionError(
                                f"artifact {source}: more than {MAX_ARTIFACT_BYTES >> 30} GiB; "
                                "is this the right URL?"
                            )
                        out.write(chunk)
                partial.replace(target)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                partial.unlink(missing_ok=True)
                raise ProvisionError(
                    f"artifact {source}: cannot download it: {exc}; check the URL and that the "
                    "controller can reach it"
                ) from exc
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        path = target
    else:
        path = Path(source)
        if not path.is_file():
            raise ProvisionError(
                f"artifact {source}: no such file on the controller; build it first or fix "
                "provision.artifacts[].source"
            )
    digest = _sha256_file(path)
    if artifact.sha256 is not None and digest != artifact.sha256:
        raise ProvisionError(
            f"artifact {source}: sha256 is {digest}, the spec says {artifact.sha256}; the "
            "download or the file is not the build you meant"
        )
    return Fetched(artifact, path, digest)


# -- what a host runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class HostBuild:
    """What a host runs, as it says itself."""

    release: str
    cmdline: str
    boot_id: str
    qemu: str
    modules: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "cmdline": self.cmdline,
            "boot_id": self.boot_id,
            "qemu": self.qemu,
            "modules": self.modules,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostBuild:
        return cls(
            release=str(data.get("release", "")),
            cmdline=str(data.get("cmdline", "")),
            boot_id=str(data.get("boot_id", "")),
            qemu=str(data.get("qemu", "")),
            modules={str(k): dict(v) for k, v in dict(data.get("modules") or {}).items()},
        )


def read_build(remote: Remote, qemu_binary: str, modules: Sequence[str] = ()) -> HostBuild:
    """Kernel release, command line, boot id, QEMU version and ``modules``' srcversion/version."""
    lines = [
        'echo "release $(uname -r)"',
        'echo "cmdline $(cat /proc/cmdline)"',
        'echo "boot_id $(cat /proc/sys/kernel/random/boot_id)"',
        f'echo "qemu $({shlex.quote(qemu_binary)} --version 2>/dev/null | head -n 1)"',
    ]
    for m in modules:
        d = f"/sys/module/{m}"
        lines.append(
            f'echo "module {m} $(cat {d}/srcversion 2>/dev/null || echo -) '
            f'$(cat {d}/version 2>/dev/null || echo -) $([ -d {d} ] && echo loaded || echo absent)"'
        )
    out = remote.check_shell("\n".join(lines), timeout=60).stdout
    fields: dict[str, str] = {}
    mods: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key == "module":
            parts = rest.split()
            if len(parts) == 4:
                name, src, ver, state = parts
                mods[name] = {
                    "srcversion": "" if src == "-" else src,
                    "version": "" if ver == "-" else ver,
                    "state": state,
                }
        else:
            fields[key] = rest.strip()
    return HostBuild(
        release=fields.get("release", ""),
        cmdline=fields.get("cmdline", ""),
        boot_id=fields.get("boot_id", ""),
        qemu=fields.get("qemu", ""),
        modules=mods,
    )


def new_cmdline(current: str, add: Sequence[str], remove: Sequence[str]) -> str:
    """``current`` without ``remove`` (a bare name drops ``name`` and every ``name=...``; a
    ``name=value`` drops that token only) and with ``add`` (replacing an argument of the same
    name); the boot loader's ``BOOT_IMAGE=`` is dropped (kexec names the image itself)."""
    names = {a.split("=", 1)[0] for a in add}

    def dropped(token: str) -> bool:
        name = token.split("=", 1)[0]
        if name == "BOOT_IMAGE" or name in names:
            return True
        return any(token == r or ("=" not in r and name == r) for r in remove)

    kept = [t for t in current.split() if not dropped(t)]
    return " ".join([*kept, *add])


def verify_problems(spec: ProvisionSpec, build: HostBuild, expected: dict[str, str]) -> list[str]:
    """What differs between what ``spec`` deployed and what the host runs (``expected``: the
    srcversion of each module's file, read before loading it)."""
    problems: list[str] = []
    if spec.kernel is not None:
        if build.release != spec.kernel.release:
            problems.append(
                f"kernel: uname -r is {build.release!r}, the build is {spec.kernel.release!r} "
                "(the boot did not take the new kernel)"
            )
        tokens = build.cmdline.split()
        for arg in spec.kernel.args_add:
            if arg not in tokens:
                problems.append(f"kernel command line lacks {arg!r}: {build.cmdline}")
        for arg in spec.kernel.args_remove:
            if any(t == arg or ("=" not in arg and t.split("=", 1)[0] == arg) for t in tokens):
                problems.append(f"kernel command line still has {arg!r}: {build.cmdline}")
    for m in spec.modules:
        seen = build.modules.get(m.name, {})
        want = expected.get(m.name, "")
        if seen.get("state") != "loaded":
            problems.append(f"module {m.name}: not loaded")
        elif want and seen.get("srcversion") != want:
            problems.append(
                f"module {m.name}: loaded srcversion {seen.get('srcversion') or '-'}, "
                f"the deployed file's is {want}"
            )
    if spec.expect_qemu is not None and spec.expect_qemu not in build.qemu:
        problems.append(f"QEMU: {build.qemu or 'no version'!r} does not contain {spec.expect_qemu!r}")
    return problems


# -- one host ---------------------------------------------------------------------------------


class HostProvisioner:
    """Provision one host from ``spec`` and roll it back (see the module docstring)."""

    def __init__(
        self,
        remote: Remote,
        spec: ProvisionSpec | None,
        *,
        qemu_binary: str,
        progress: Progress = _quiet,
    ) -> None:
        self.remote = remote
        self.spec = spec
        self.qemu_binary = qemu_binary
        self.progress = progress
        self.dir = f"{remote.host.state_dir}/provision"
        self.record_path = f"{self.dir}/record.json"
        self.record: dict[str, Any] = {}

    def _say(self, message: str) -> None:
        self.progress(f"{self.remote.name}: {message}")

    # -- the record on the host ------------------------------------------------------------------

    def read_record(self) -> dict[str, Any] | None:
        """The host's provisioning record; None when it has none."""
        res = self.remote.run(["cat", self.record_path], timeout=30)
        if res.rc != 0:
            return None
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError as exc:
            raise ProvisionError(
                f"{self.remote.name}: {self.record_path} is not JSON ({exc.msg}); inspect it, "
                "then remove it to forget that build"
            ) from None
        return data if isinstance(data, dict) else None

    def _save(self, **changes: Any) -> None:
        self.record.update(changes)
        text = json.dumps(self.record, indent=2, sort_keys=True) + "\n"
        q = shlex.quote
        self.remote.check_shell(
            f"mkdir -p {q(self.dir)} && printf %s {q(text)} > {q(self.record_path)}.tmp && "
            f"mv {q(self.record_path)}.tmp {q(self.record_path)}",
            timeout=30,
        )

    def _sh(self, script: str, what: str, *, timeout: float | None = None) -> str:
        spec_timeout = self.spec.step_timeout_s if self.spec is not None else 1800.0
        res = self.remote.run_shell(script, timeout=timeout or spec_timeout)
        if res.rc != 0:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
            raise ProvisionError(f"{self.remote.name}: {what} failed (exit {res.rc}): {tail}")
        return res.stdout

    # -- provisioning ----------------------------------------------------------------------------

    def provision(self, fetched: Sequence[Fetched], *, build_id: str) -> dict[str, Any]:
        """Deploy, boot, load and verify; the record as it ends. Raises :class:`ProvisionError`
        (the host is *not* rolled back here: the caller decides)."""
        spec = self.spec
        if spec is None:
            raise ProvisionError(f"{self.remote.name}: no provision spec for this host")
        old = self.read_record()
        if old is not None and old.get("status") != "rolled-back":
            raise ProvisionError(
                f"{self.remote.name}: already carries build {old.get('id')} "
                f"({old.get('status')}); roll it back first: mdevtest provision --rollback"
            )
        names = [m.name for m in spec.modules]
        before = read_build(self.remote, self.qemu_binary, names)
        self.record = {
            "id": build_id,
            "status": "deploying",
            "started_at": _now(),
            "before": before.to_json(),
            "boot": spec.kernel.method if spec.kernel else None,
            "artifacts": [],
            "packages": [],
            "files": {"created": [], "backup": None},
            "modules": [m.model_dump() for m in spec.modules],
            "steps": [],
        }
        self._save()
        try:
            self._deploy(fetched)
            for i, command in enumerate(spec.commands):
                self._say(f"command {i + 1}/{len(spec.commands)}: {command}")
                self._sh(command, f"command {command!r}")
                self._step(f"command {command}")
            if spec.kernel is not None:
                self._boot(spec.kernel, before)
            expected = self._load_modules()
            for command in spec.after_boot:
                self._say(f"after boot: {command}")
                self._sh(command, f"after_boot command {command!r}")
                self._step(f"after boot {command}")
            after = read_build(self.remote, self.qemu_binary, names)
            problems = verify_problems(spec, after, expected)
            self._save(after=after.to_json(), expected_modules=expected)
            if problems:
                raise ProvisionError(f"{self.remote.name}: verification failed: " + "; ".join(problems))
            self._save(status="provisioned", finished_at=_now())
            self._say(f"verified: kernel {after.release}, {after.qemu}")
            return self.record
        except BaseException as exc:
            with contextlib.suppress(MdevtestError):
                self._save(status="failed", finished_at=_now(), error=str(exc)[:2000])
            raise

    def _step(self, what: str) -> None:
        self._save(steps=[*self.record.get("steps", []), f"{_now()} {what}"])

    def _deploy(self, fetched: Sequence[Fetched]) -> None:
        q = shlex.quote
        art_dir = f"{self.dir}/artifacts"
        self.remote.check(["mkdir", "-p", art_dir], timeout=30)
        placed: list[tuple[Fetched, str]] = []
        for f in fetched:
            target = f"{art_dir}/{f.remote_name}"
            self._say(f"copying {f.artifact.name} ({f.path.stat().st_size >> 20} MiB)")
            self.remote.put(f.path, target, timeout=self.spec.step_timeout_s if self.spec else None)
            placed.append((f, target))
        self._save(
            artifacts=[
                {"kind": f.artifact.kind, "name": f.artifact.name, "source": f.artifact.source,
                 "sha256": f.sha256, "dest": f.artifact.dest}
                for f, _ in placed
            ]
        )  # fmt: skip
        # files the tarballs and files will write: the ones already there are saved first
        targets: list[str] = []
        for f, path in placed:
            if f.artifact.kind == "file" and f.artifact.dest:
                targets.append(f.artifact.dest)
            elif f.artifact.kind == "tarball":
                dest = (f.artifact.dest or "/").rstrip("/")
                listing = self._sh(f"tar -tf {q(path)}", f"listing {f.artifact.name}")
                for line in listing.splitlines():
                    member = line.strip().removeprefix("./")
                    if member and not member.endswith("/"):
                        targets.append(f"{dest}/{member}")
        if targets:
            lst = f"{self.dir}/targets.txt"
            self.remote.write_text(lst, "\n".join(targets) + "\n", timeout=30)
            out = self._sh(
                f"""set -e
: > {q(self.dir)}/existing.txt
while IFS= read -r p; do
  if [ -e "$p" ] || [ -L "$p" ]; then printf '%s\\n' "${{p#/}}" >> {q(self.dir)}/existing.txt
  else echo "new $p"; fi
done < {q(lst)}
if [ -s {q(self.dir)}/existing.txt ]; then
  tar -C / -cpf {q(self.dir)}/backup.tar --files-from={q(self.dir)}/existing.txt && echo backup
fi""",
                "saving the files the build replaces",
            )
            created = [ln[4:] for ln in out.splitlines() if ln.startswith("new ")]
            backup = f"{self.dir}/backup.tar" if "backup" in out.splitlines() else None
            self._save(files={"created": created, "backup": backup})
        debs = [(f, p) for f, p in placed if f.artifact.kind == "deb"]
        if debs:
            packages: list[dict[str, str | None]] = []
            for f, path in debs:
                out = self._sh(f"dpkg-deb -f {q(path)} Package Version", f"reading {f.artifact.name}")
                info = dict(ln.partition(": ")[::2] for ln in out.splitlines() if ": " in ln)
                name = info.get("Package", "").strip()
                was = self.remote.run(
                    ["dpkg-query", "-W", "-f", "${Status} ${Version}", name], timeout=30
                )
                words = was.stdout.split()
                before = words[-1] if was.rc == 0 and "installed" in words[:3] else None
                packages.append(
                    {"package": name, "version": info.get("Version", "").strip(), "before": before}
                )
            self._save(packages=packages)
            self._say(f"dpkg -i {' '.join(str(p['package']) for p in packages)}")
            self._sh(
                "DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "
                + " ".join(q(p) for _, p in debs),
                "installing the packages (dpkg -i)",
            )
            self._step("packages installed")
        for f, path in placed:
            if f.artifact.kind == "tarball":
                dest = f.artifact.dest or "/"
                self._sh(f"mkdir -p {q(dest)} && tar -C {q(dest)} -xpf {q(path)}",
                         f"extracting {f.artifact.name}")  # fmt: skip
                self._step(f"extracted {f.artifact.name} into {dest}")
            elif f.artifact.kind == "file" and f.artifact.dest:
                mode = f.artifact.mode or "0644"
                self._sh(f"install -D -m {mode} {q(path)} {q(f.artifact.dest)}",
                         f"installing {f.artifact.dest}")  # fmt: skip
                self._step(f"installed {f.artifact.dest}")

    def _load_modules(self) -> dict[str, str]:
        """(Re)load the spec's modules; each one's file srcversion, by name."""
        expected: dict[str, str] = {}
        for m in self.spec.modules if self.spec else ():
            what = m.path or m.name
            expected[m.name] = self._sh(
                f"modinfo -F srcversion {shlex.quote(what)}", f"modinfo of {what}"
            ).strip()
            self._reload(m.name, m.path, m.params)
            self._step(f"loaded {m.name} ({expected[m.name]})")
        return expected

    def _reload(self, name: str, path: str | None, params: Sequence[str]) -> None:
        q = shlex.quote
        load = f"insmod {q(path)}" if path else f"modprobe {q(name)}"
        args = " ".join(q(p) for p in params)
        self._say(f"loading {name}: {load} {args}".rstrip())
        self._sh(
            f'if [ -d /sys/module/{name} ]; then rmmod {name} || {{ echo "rmmod {name} failed '
            f"(in use? mdevs: $(ls /sys/bus/mdev/devices 2>/dev/null | tr '\\n' ' '))\" >&2; "
            f"exit 3; }}; fi\n{load} {args}",
            f"loading module {name}",
            timeout=120,
        )

    # -- booting ---------------------------------------------------------------------------------

    def _boot(self, kernel: KernelBoot, before: HostBuild) -> None:
        image = kernel.image or f"/boot/vmlinuz-{kernel.release}"
        initrd = kernel.initrd or f"/boot/initrd.img-{kernel.release}"
        cmdline = new_cmdline(before.cmdline, kernel.args_add, kernel.args_remove)
        self._say(f"booting {kernel.release} by {kernel.method}: {cmdline}")
        if kernel.method == "kexec":
            self._kexec(image, initrd, cmdline, explicit_initrd=kernel.initrd is not None)
        else:
            self._oneshot_reboot(kernel.release, image, initrd, cmdline)
        self._wait_boot(before.boot_id, self.spec.boot_timeout_s if self.spec else 900.0)
        self._step(f"booted by {kernel.method}")

    def _kexec(self, image: str, initrd: str, cmdline: str, *, explicit_initrd: bool) -> None:
        q = shlex.quote
        initrd_arg = (
            f"--initrd={q(initrd)}"
            if explicit_initrd
            else f"$([ -f {q(initrd)} ] && echo --initrd={q(initrd)})"
        )
        self._sh(
            f"command -v kexec >/dev/null || {{ echo 'kexec not installed (kexec-tools)' >&2; "
            f"exit 3; }}\n[ -f {q(image)} ] || {{ echo 'no kernel image {image}' >&2; exit 3; }}\n"
            f"kexec -l {q(image)} {initrd_arg} --append={q(cmdline)}",
            f"loading {image} for kexec",
            timeout=180,
        )
        self._detached(
            "sleep 1; if [ -d /run/systemd/system ]; then systemctl kexec; else sync; kexec -e; fi"
        )

    def _oneshot_reboot(self, release: str, image: str, initrd: str, cmdline: str) -> None:
        """A boot entry used for the next boot only (GRUB or systemd-boot). Unproven: see
        docs/provisioning.md."""
        q = shlex.quote
        entry = "mdevtest-provision"
        grub = (
            f"#!/bin/sh\nexec tail -n +3 $0\nmenuentry '{entry}' --id {entry} {{\n"
            f"  linux {image} {cmdline}\n"
            f"  initrd {initrd}\n}}\n"
        )
        loader = f"title {entry}\nlinux {image}\ninitrd {initrd}\noptions {cmdline}\n"
        self._sh(
            f"""set -e
if command -v bootctl >/dev/null && bootctl is-installed >/dev/null 2>&1; then
  esp=$(bootctl --print-esp-path)
  mkdir -p "$esp/loader/entries"
  printf %s {q(loader)} > "$esp/loader/entries/{entry}.conf"
  bootctl set-oneshot {entry}.conf
  echo systemd-boot
elif command -v grub-reboot >/dev/null; then
  printf %s {q(grub)} > /etc/grub.d/09_{entry} && chmod +x /etc/grub.d/09_{entry}
  update-grub >/dev/null 2>&1 || grub-mkconfig -o /boot/grub/grub.cfg >/dev/null
  grep -q '^GRUB_DEFAULT=saved' /etc/default/grub ||
    {{ echo 'grub-reboot needs GRUB_DEFAULT=saved in /etc/default/grub' >&2; exit 3; }}
  grub-reboot {entry}
  echo grub
else
  echo 'no systemd-boot and no grub-reboot: use method: kexec' >&2; exit 3
fi""",
            f"adding a one-shot boot entry for {release}",
        )
        self._save(boot_entry=entry)
        self._detached("sleep 1; systemctl reboot || reboot")

    def _detached(self, script: str) -> None:
        self.remote.run_shell(
            f"nohup setsid sh -c {shlex.quote(script)} >/dev/null 2>&1 </dev/null &", timeout=30
        )

    def _wait_boot(self, old_boot_id: str, timeout: float) -> None:
        """Until the host answers SSH with a boot id other than ``old_boot_id``."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        time.sleep(2)
        while time.monotonic() < deadline:
            self.remote.close()
            try:
                res = self.remote.run(["cat", "/proc/sys/kernel/random/boot_id"], timeout=15)
                boot_id = res.stdout.strip()
                if res.rc == 0 and boot_id and boot_id != old_boot_id:
                    return
                last = "still the old boot"
            except MdevtestError as exc:
                last = str(exc)
            time.sleep(_BOOT_POLL_S)
        raise ProvisionError(
            f"{self.remote.name}: did not come back with a new boot within {timeout:g} s "
            f"(last: {last}); look at its console"
        )

    # -- rollback --------------------------------------------------------------------------------

    def rollback(self) -> dict[str, Any] | None:
        """Undo the recorded build (see the module docstring). None: nothing to roll back.
        Raises :class:`ProvisionError` listing what could not be undone."""
        record = self.read_record()
        if record is None or record.get("status") == "rolled-back":
            return None
        self.record = record
        before = HostBuild.from_json(record.get("before") or {})
        modules = [dict(m) for m in record.get("modules", [])]
        names = [str(m["name"]) for m in modules]
        self._say(f"rolling back {record.get('id')} to kernel {before.release}")
        problems: list[str] = []
        now = read_build(self.remote, self.qemu_binary, names)
        if record.get("boot") and (now.release != before.release or now.cmdline != before.cmdline):
            try:
                self._boot_back(record, before, now.boot_id)
            except MdevtestError as exc:
                problems.append(str(exc))
        else:
            for m in modules:  # the same boot: unload what the build loaded
                seen = now.modules.get(m["name"], {})
                was = before.modules.get(m["name"], {})
                if seen.get("state") == "loaded" and seen.get("srcversion") != was.get("srcversion"):
                    res = self.remote.run(["rmmod", m["name"]], timeout=60)
                    if res.rc != 0:
                        problems.append(f"rmmod {m['name']}: {res.stderr.strip()}")
        problems += self._restore_files(record)
        problems += self._restore_packages(record)
        after = read_build(self.remote, self.qemu_binary, names)
        for m in modules:  # reload what ran before, from the restored files
            was = before.modules.get(m["name"], {})
            if (
                was.get("state") == "loaded"
                and after.modules.get(m["name"], {}).get("state") != "loaded"
            ):
                try:
                    self._reload(m["name"], m.get("path"), ())
                except MdevtestError as exc:
                    problems.append(str(exc))
        after = read_build(self.remote, self.qemu_binary, names)
        if after.release != before.release:
            problems.append(f"kernel {after.release} runs, not the recorded {before.release}")
        for name, was in before.modules.items():
            seen = after.modules.get(name, {})
            if was.get("state") == "loaded" and seen.get("srcversion") != was.get("srcversion"):
                problems.append(
                    f"module {name}: srcversion {seen.get('srcversion') or '-'} loaded, "
                    f"{was.get('srcversion')} before the build"
                )
        self._save(
            status="rolled-back" if not problems else record.get("status", "failed"),
            rolled_back_at=_now(),
            rollback_problems=problems,
            after_rollback=after.to_json(),
        )
        if problems:
            raise ProvisionError(
                f"{self.remote.name}: rollback of {record.get('id')} incomplete: " + "; ".join(problems)
            )
        self._say(f"rolled back: kernel {after.release}")
        return self.record

    def _boot_back(self, record: dict[str, Any], before: HostBuild, boot_id: str) -> None:
        if record.get("boot") == "reboot":
            entry = str(record.get("boot_entry") or "mdevtest-provision")
            self._sh(
                f"rm -f /etc/grub.d/09_{entry}; (update-grub || true) >/dev/null 2>&1; "
                "esp=$(bootctl --print-esp-path 2>/dev/null) && "
                f'rm -f "$esp/loader/entries/{entry}.conf"; true',
                "removing the one-shot boot entry",
            )
            self._detached("sleep 1; systemctl reboot || reboot")
        else:
            self._kexec(f"/boot/vmlinuz-{before.release}", f"/boot/initrd.img-{before.release}",
                        new_cmdline(before.cmdline, (), ()), explicit_initrd=False)  # fmt: skip
        self._wait_boot(boot_id, self.spec.boot_timeout_s if self.spec else 900.0)
        self._step(f"booted back into {before.release}")

    def _restore_files(self, record: dict[str, Any]) -> list[str]:
        files = record.get("files") or {}
        created = [str(p) for p in files.get("created", [])]
        problems: list[str] = []
        if created:
            res = self.remote.run(["rm", "-f", "--", *created], timeout=120)
            if res.rc != 0:
                problems.append(f"removing the build's files: {res.stderr.strip()}")
        backup = files.get("backup")
        if backup:
            res = self.remote.run(["tar", "-C", "/", "-xpf", str(backup)], timeout=600)
            if res.rc != 0:
                problems.append(f"restoring {backup}: {res.stderr.strip()}")
        return problems

    def _restore_packages(self, record: dict[str, Any]) -> list[str]:
        packages = record.get("packages") or []
        new = [p["package"] for p in packages if p.get("before") is None and p.get("package")]
        older = [p for p in packages if p.get("before") and p.get("before") != p.get("version")]
        problems: list[str] = []
        if new:
            self._say(f"dpkg --purge {' '.join(new)}")
            res = self.remote.run_shell(
                "DEBIAN_FRONTEND=noninteractive dpkg --purge " + " ".join(shlex.quote(n) for n in new),
                timeout=1800,
            )
            if res.rc != 0:
                problems.append(f"dpkg --purge: {res.stderr.strip()[-400:]}")
        if older:
            wanted = " ".join(shlex.quote(f"{p['package']}={p['before']}") for p in older)
            res = self.remote.run_shell(
                f"DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades {wanted}",
                timeout=1800,
            )
            if res.rc != 0:
                problems.append(
                    f"reinstalling {wanted} (the versions before the build) failed: "
                    f"{res.stderr.strip()[-300:]}; install them by hand"
                )
        return problems


@contextlib.contextmanager
def _leased(inventory: Inventory, hosts: Sequence[str], *, run_id: str, ttl: float) -> Iterator[Testbed]:
    """A Testbed holding ``hosts``' leases (``ttl``: longer than a boot, whose heartbeats fail),
    what a dead run left on each reaped once its lease is taken (``rmmod`` needs no mdev)."""
    from mdevtest.lease import LeaseManager
    from mdevtest.testbed import Testbed

    with Testbed(inventory, run_id=run_id) as testbed:

        def reap(host: str) -> None:
            testbed.reap_host(host)

        with LeaseManager(
            testbed.pool, run_id=run_id, worker="provision", ttl=ttl, on_acquire=reap
        ) as leases:
            leases.hold(list(hosts))
            yield testbed


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- several hosts ----------------------------------------------------------------------------


@dataclass
class HostOutcome:
    host: str
    record: dict[str, Any] | None = None
    error: str | None = None
    rolled_back: bool = False
    rollback_error: str | None = None


def build_id(specs: Sequence[ProvisionSpec]) -> str:
    """A short id of the builds (their specs), the same for the same specs."""
    text = json.dumps([s.model_dump(mode="json") for s in specs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def provision_hosts(
    inventory: Inventory,
    hosts: Sequence[str],
    *,
    spec: ProvisionSpec | None = None,
    rollback_on_failure: bool = True,
    progress: Progress = _quiet,
    run_id: str = "provision",
) -> list[HostOutcome]:
    """Provision ``hosts`` in parallel under their leases (``spec`` replaces the inventory's);
    when any fails, every one of them is rolled back (unless ``rollback_on_failure`` is off).
    Raises :class:`ProvisionError` with every host's failure."""
    specs: dict[str, ProvisionSpec] = {}
    for name in hosts:
        found = spec if spec is not None else inventory.provision_of(name)
        if found is None:
            raise ProvisionError(
                f"{name}: the inventory has no provision: section for it (top level or the host's); "
                "add one or pass --spec FILE"
            )
        specs[name] = found
    fetched: dict[str, list[Fetched]] = {}
    cache: dict[tuple[str, str | None], Fetched] = {}
    for name, s in specs.items():
        fetched[name] = []
        for a in s.artifacts:
            key = (a.source, a.sha256)
            if key not in cache:
                progress(f"fetching {a.source}")
                cache[key] = fetch(a)
            fetched[name].append(Fetched(a, cache[key].path, cache[key].sha256))
    bid = build_id(list(specs.values()))
    outcomes = {name: HostOutcome(name) for name in hosts}
    ttl = max(s.boot_timeout_s for s in specs.values()) + 120.0
    with _leased(inventory, hosts, run_id=run_id, ttl=ttl) as testbed:
        provisioners = {
            n: HostProvisioner(testbed.remote(n), specs[n],
                               qemu_binary=inventory.host(n).qemu_binary, progress=progress)
            for n in hosts
        }  # fmt: skip
        lock = threading.Lock()

        def one(name: str) -> None:
            try:
                record = provisioners[name].provision(fetched[name], build_id=bid)
                with lock:
                    outcomes[name].record = record
            except MdevtestError as exc:
                with lock:
                    outcomes[name].error = str(exc)

        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            list(pool.map(one, hosts))
        failed = [o for o in outcomes.values() if o.error]
        if failed and rollback_on_failure:
            for name in hosts:
                try:
                    provisioners[name].rollback()
                    outcomes[name].rolled_back = True
                except MdevtestError as exc:
                    outcomes[name].rollback_error = str(exc)
        if failed:
            lines = [f"{o.host}: {o.error}" for o in failed]
            if rollback_on_failure:
                lines += [
                    f"{o.host}: rolled back" if o.rolled_back else f"{o.host}: {o.rollback_error}"
                    for o in outcomes.values()
                ]
            else:
                lines.append("not rolled back (--no-rollback): mdevtest provision --rollback undoes it")
            raise ProvisionError("provisioning failed:\n  " + "\n  ".join(lines))
    return list(outcomes.values())


def rollback_hosts(
    inventory: Inventory, hosts: Sequence[str], *, progress: Progress = _quiet, run_id: str = "provision"
) -> list[HostOutcome]:
    """Roll back the recorded build of each of ``hosts`` (in parallel, under their leases)."""
    outcomes = {name: HostOutcome(name) for name in hosts}
    with _leased(inventory, hosts, run_id=run_id, ttl=1020.0) as testbed:

        def one(name: str) -> None:
            p = HostProvisioner(
                testbed.remote(name),
                inventory.provision_of(name),
                qemu_binary=inventory.host(name).qemu_binary,
                progress=progress,
            )
            try:
                outcomes[name].record = p.rollback()
                outcomes[name].rolled_back = outcomes[name].record is not None
            except MdevtestError as exc:
                outcomes[name].rollback_error = str(exc)

        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            list(pool.map(one, hosts))
    bad = [o for o in outcomes.values() if o.rollback_error]
    if bad:
        raise ProvisionError("rollback failed:\n  " + "\n  ".join(f"{o.rollback_error}" for o in bad))
    return list(outcomes.values())


def read_records(inventory: Inventory, hosts: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Each host's provisioning record (None: none), without leasing (read only)."""
    from mdevtest.testbed import Testbed

    found: dict[str, dict[str, Any] | None] = {}
    with Testbed(inventory, run_id="provision-status") as testbed:
        for name in hosts:
            p = HostProvisioner(testbed.remote(name), None, qemu_binary=inventory.host(name).qemu_binary)
            found[name] = p.read_record()
    return found
