"""Remote execution on lab hosts over SSH (fabric on paramiko).

What it guarantees:

* one SSH connection per host per :class:`RemotePool` (one pool per process), reused by every call and
  re-opened once if the server dropped it (an sshd restart);
* host keys checked against the inventory's ``known_hosts``; unknown keys are refused unless the
  inventory explicitly says ``accept_unknown_host_keys`` (trust on first use, see
  :class:`~mdevtest.inventory.SshConfig`); a known key that changed is refused either way;
* the private key is loaded by :func:`load_private_key` before connecting, so a missing file, a
  wrong passphrase or a file that is no private key is reported as such, not as a host problem;
* a timeout on every call: connecting, each command, each file transfer, each socket bridge;
* argument vectors are quoted with :func:`shlex.join`; nothing is pasted into a shell string unquoted;
* :meth:`Remote.run` returns a frozen :class:`CommandResult`; :meth:`Remote.check` raises
  :class:`~mdevtest.errors.CommandFailed` carrying host, command, rc and the tail of stderr.

UNIX sockets on a host (QMP, serial console) are reached from the controller with
:meth:`Remote.open_unix_socket`: an exec channel runs ``socat`` on the host and the channel is pumped
into one end of a local socket pair, whose other end behaves like a connected local socket.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut as InvokeTimedOut
from invoke.exceptions import UnexpectedExit

from mdevtest.credentials import SecretUnavailable
from mdevtest.errors import CommandFailed, CommandTimedOut, ConnectFailed, KeyFileError, RemoteError
from mdevtest.inventory import Host

#: A host taken for dead is probed (a TCP connect to its SSH port, <= 1 s) at most this often
#: (a host brought back is seen at once by the next call a second later).
DEAD_PROBE_EVERY_S = 1.0

#: A private key file is a few KiB; a larger file is not one.
_MAX_KEY_BYTES = 64 * 1024
_KEY_CLASSES: tuple[tuple[type[Any], type[paramiko.PKey]], ...] = (
    (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
    (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
    (rsa.RSAPrivateKey, paramiko.RSAKey),
)
_KINDS = "OpenSSH or PEM format; Ed25519, ECDSA or RSA"


@dataclass(frozen=True)
class CommandResult:
    """What one remote command did. ``duration`` is wall-clock seconds seen by the controller."""

    host: str
    command: str
    rc: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


def quote_argv(argv: Sequence[str]) -> str:
    """Render an argument vector as one shell-safe command line."""
    return shlex.join(str(a) for a in argv)


def load_private_key(path: str | os.PathLike[str], passphrase: str | None = None) -> paramiko.PKey:
    """The private key in ``path``, decrypted with ``passphrase`` if it is encrypted.

    Reads OpenSSH and PEM (traditional or PKCS#8) files holding an Ed25519, ECDSA or RSA key. A
    passphrase given for an unencrypted key is ignored, as ``ssh`` does. Raises
    :class:`~mdevtest.errors.KeyFileError` saying which problem it is: the file does not exist or
    cannot be read, it is not a private key (a public key, garbage, an unsupported type), it is
    encrypted and no passphrase was given, or the passphrase is wrong.
    """
    shown = os.fspath(path)
    data = _read_key_file(shown)
    password = passphrase.encode() if passphrase is not None else None
    try:
        try:
            loaded = _parse_key(data, password)
        except TypeError:
            if password is None:
                raise KeyFileError(
                    shown,
                    f"key file {shown} is encrypted and no passphrase was given; set "
                    "ssh.key_passphrase ({env: NAME} or {file: PATH})",
                ) from None
            loaded = _parse_key(data, None)  # a passphrase for an unencrypted key
    except ValueError:
        if password is not None and _is_encrypted(data):
            raise KeyFileError(
                shown,
                f"the passphrase is wrong for key {shown}: check the value ssh.key_passphrase "
                "names (`ssh-keygen -y -f KEY` tries a passphrase by hand)",
            ) from None
        raise KeyFileError(shown, _not_a_key(shown, data)) from None
    except (UnsupportedAlgorithm, TypeError):
        raise KeyFileError(shown, _not_a_key(shown, data)) from None
    key_class = next((cls for kind, cls in _KEY_CLASSES if isinstance(loaded, kind)), None)
    if key_class is None:
        raise KeyFileError(
            shown,
            f"key file {shown} holds a {type(loaded).__name__.removeprefix('_')}, which mdevtest "
            f"cannot use ({_KINDS})",
        )
    # Hand paramiko the decrypted key in the one format all its key classes read.
    try:
        text = loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode("ascii")
        return key_class.from_private_key(io.StringIO(text))
    except (ValueError, paramiko.SSHException):
        raise KeyFileError(shown, _not_a_key(shown, data)) from None


def _read_key_file(shown: str) -> bytes:
    try:
        info = os.stat(shown)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise KeyFileError(
                shown, f"key file {shown} is {kind}; ssh.key_file names the private key file"
            )
        if info.st_size > _MAX_KEY_BYTES:
            raise KeyFileError(
                shown,
                f"key file {shown} is {info.st_size} bytes, too large for a private key; "
                "ssh.key_file names the private key file",
            )
        with open(shown, "rb") as fh:
            return fh.read(_MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(
            shown,
            f"key file {shown} does not exist; check ssh.key_file (a relative path is relative "
            "to the inventory file; the local lab's keys are made by `mdevtest lab up`)",
        ) from None
    except PermissionError:
        raise KeyFileError(
            shown, f"cannot read key file {shown}: permission denied for the controller's user"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KeyFileError(shown, f"cannot read key file {shown}: {reason}") from None


def _parse_key(data: bytes, password: bytes | None) -> Any:
    """A cryptography private key; TypeError: encrypted without a password, or a password for an
    unencrypted key; ValueError: not a key, or a wrong password."""
    try:
        return serialization.load_ssh_private_key(data, password)
    except ValueError:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            raise
    return serialization.load_pem_private_key(data, password)


def _is_encrypted(data: bytes) -> bool:
    try:
        _parse_key(data, None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False
    return False


def _not_a_key(shown: str, data: bytes) -> str:
    if data.lstrip().startswith((b"ssh-", b"ecdsa-", b"sk-")):
        return (
            f"key file {shown} is a public key; ssh.key_file names the private key (the file "
            "without .pub)"
        )
    return f"key file {shown} is not a private key mdevtest can read ({_KINDS})"


class Remote:
    """SSH access to one host. Use as a context manager or call :meth:`close`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.name = host.name
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._dead: tuple[float, str] | None = None  # (when last probed, why it is dead)

    # -- connection ------------------------------------------------------------------------------

    def _passphrase(self) -> str | None:
        ssh = self.host.ssh
        if ssh.key_passphrase is None:
            return None
        try:
            return ssh.key_passphrase.resolve()
        except SecretUnavailable as exc:
            raise ConnectFailed(
                self.name, f"the passphrase of {ssh.key_file} (ssh.key_passphrase): {exc}"
            ) from None

    def _private_key(self) -> paramiko.PKey:
        """The host's key, loaded here so its problems are not reported as the host's."""
        try:
            return load_private_key(self.host.ssh.key_file, self._passphrase())
        except KeyFileError as exc:
            raise ConnectFailed(self.name, str(exc)) from exc

    def _new_connection(self, pkey: paramiko.PKey | None = None) -> Connection:
        """A connection, not yet open. With ``pkey`` it authenticates with that loaded key;
        without, paramiko loads ``ssh.key_file`` itself."""
        ssh = self.host.ssh
        config = Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
        key: dict[str, Any]
        if pkey is not None:
            key = {"pkey": pkey}
        else:
            key = {"key_filename": str(ssh.key_file)}
            passphrase = self._passphrase()
            if passphrase is not None:
                key["passphrase"] = passphrase
        conn = Connection(
            host=self.host.address,
            user=ssh.user,
            port=ssh.port,
            config=config,
            connect_timeout=ssh.connect_timeout_s,
            connect_kwargs={
                "look_for_keys": False,
                "allow_agent": False,
                "banner_timeout": ssh.connect_timeout_s,
                "auth_timeout": ssh.connect_timeout_s,
                **key,
            },
        )
        client = conn.client
        if ssh.known_hosts is not None and ssh.known_hosts.exists():
            client.load_host_keys(str(ssh.known_hosts))
        elif ssh.known_hosts is None:
            client.load_system_host_keys()
        if ssh.accept_unknown_host_keys:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    @property
    def unreachable(self) -> str | None:
        """Why the host is taken for dead (None: it is not)."""
        return self._dead[1] if self._dead is not None else None

    def _mark_dead(self, why: str) -> None:
        self._dead = (time.monotonic(), why)

    def _still_dead(self) -> str | None:
        """While dead, one quick TCP probe of the SSH port at most every
        :data:`DEAD_PROBE_EVERY_S`; the host is alive again once one connects."""
        if self._dead is None:
            return None
        probed, why = self._dead
        if time.monotonic() - probed < DEAD_PROBE_EVERY_S:
            return why
        ssh = self.host.ssh
        try:
            with socket.create_connection(
                (self.host.address, ssh.port), timeout=min(1.0, ssh.connect_timeout_s)
            ):
                pass
        except OSError:
            self._dead = (time.monotonic(), why)
            return why
        self._dead = None
        return None

    def connect(self) -> Connection:
        """Open the connection if it is not open (or was dropped); return it.

        A host that could not be reached is taken for dead: calls fail at once with
        :class:`ConnectFailed` saying so, so a dead host costs one connect timeout, not one per
        call (cleanup, diagnosis and reports make many); a quick TCP probe of its SSH port, at
        most every :data:`DEAD_PROBE_EVERY_S`, tells when it is back."""
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                transport = self._conn.transport
                if transport is not None and transport.is_active():
                    return self._conn
                self._conn.close()
                self._conn = None
            dead = self._still_dead()
            if dead is not None:
                raise ConnectFailed(self.name, f"unreachable (not retried for a while): {dead}")
            conn = self._new_connection(self._private_key())
            ssh = self.host.ssh
            where = f"{ssh.user}@{self.host.address}:{ssh.port}"
            try:
                conn.open()
            except paramiko.BadHostKeyException as exc:
                raise ConnectFailed(
                    self.name,
                    f"host key of {where} does not match {ssh.known_hosts}; if the host was "
                    "reinstalled, update known_hosts (for the local lab: `mdevtest lab up`)",
                ) from exc
            except paramiko.AuthenticationException as exc:
                raise ConnectFailed(
                    self.name, f"authentication as {where} with key {ssh.key_file} failed: {exc}"
                ) from exc
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise ConnectFailed(
                        self.name,
                        f"host key of {where} is not in {ssh.known_hosts or '~/.ssh/known_hosts'}; "
                        "add it (ssh-keyscan) or, for a throw-away lab only, set "
                        "ssh.accept_unknown_host_keys: true",
                    ) from exc
                why = f"SSH to {where} failed: {exc}"  # no banner, no key exchange: hung
                self._mark_dead(why)
                raise ConnectFailed(self.name, why) from exc
            except (OSError, EOFError) as exc:
                why = f"cannot reach {where} within {ssh.connect_timeout_s:g} s: {exc}"
                self._mark_dead(why)
                raise ConnectFailed(self.name, why) from exc
            if conn.transport is not None:
                _bound_transport(conn.transport, ssh.keepalive_s, ssh.dead_after_s,
                                 ssh.connect_timeout_s)  # fmt: skip
            self._dead = None
            self._conn = conn
            return conn

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Remote:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _transport(self) -> paramiko.Transport:
        transport: paramiko.Transport | None = self.connect().transport
        if transport is None:  # pragma: no cover - fabric sets it on open
            raise ConnectFailed(self.name, "SSH transport missing after connect")
        return transport

    # -- commands --------------------------------------------------------------------------------

    def run_shell(
        self,
        script: str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``script`` with the remote user's shell.

        Only for scripts written in this package: every interpolated value must already be quoted
        (``shlex.quote``). Prefer :meth:`run` with an argument vector.
        """
        limit = self.host.ssh.command_timeout_s if timeout is None else timeout
        if env:
            script = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + script
        # The host enforces the limit too, so a command we gave up on does not live on there.
        wrapped = f"timeout -k 5 {limit + 2:g} sh -c {shlex.quote(script)}"
        started = time.monotonic()
        for attempt in (1, 2):
            conn = self.connect()
            try:
                res: Any = conn.run(wrapped, hide=True, warn=True, timeout=limit, pty=False)
                break
            except InvokeTimedOut as exc:
                raise CommandTimedOut(self.name, script, limit) from exc
            except UnexpectedExit as exc:  # pragma: no cover - warn=True prevents it
                res = exc.result
                break
            except (paramiko.SSHException, EOFError, OSError) as exc:
                # The connection dropped under us (sshd restarted, link flap): reconnect once.
                self.close()
                if attempt == 2:
                    raise RemoteError(self.name, f"SSH session lost running {script}: {exc}") from exc
        return CommandResult(
            host=self.name,
            command=script,
            rc=int(res.exited),
            stdout=str(res.stdout),
            stderr=str(res.stderr),
            duration=time.monotonic() - started,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run an argument vector (quoted); never raises for a non-zero exit."""
        return self.run_shell(quote_argv(argv), timeout=timeout, env=env)

    def check(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Like :meth:`run`, but a non-zero exit raises :class:`CommandFailed`."""
        return self.raise_for(self.run(argv, timeout=timeout, env=env))

    def check_shell(self, script: str, *, timeout: float | None = None) -> CommandResult:
        """Like :meth:`run_shell`, but a non-zero exit raises :class:`CommandFailed`."""
        return self.raise_for(self.run_shell(script, timeout=timeout))

    @staticmethod
    def raise_for(result: CommandResult) -> CommandResult:
        if result.rc != 0:
            raise CommandFailed(result.host, result.command, result.rc, result.stderr)
        return result

    # -- files -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sftp(self, timeout: float | None) -> Iterator[paramiko.SFTPClient]:
        limit = self.host.ssh.command_timeout_s if timeout is None else timeout
        try:
            sftp = paramiko.SFTPClient.from_transport(self._transport())
        except (paramiko.SSHException, OSError) as exc:
            raise RemoteError(self.name, f"cannot open SFTP: {exc}") from exc
        if sftp is None:  # pragma: no cover
            raise RemoteError(self.name, "cannot open SFTP")
        try:
            sftp.get_channel().settimeout(limit)  # type: ignore[union-attr]
            yield sftp
        finally:
            sftp.close()

    def put(self, local: Path, remote_path: str, *, timeout: float | None = None) -> None:
        """Copy a controller file to the host (atomically: temp name, then rename)."""
        tmp = f"{remote_path}.part"
        with self._sftp(timeout) as sftp:
            try:
                sftp.put(str(local), tmp)
                sftp.posix_rename(tmp, remote_path)
            except (OSError, paramiko.SSHException) as exc:
                raise RemoteError(self.name, f"put {local} -> {remote_path} failed: {exc}") from exc

    def get(self, remote_path: str, local: Path, *, timeout: float | None = None) -> None:
        """Copy a host file to the controller."""
        with self._sftp(timeout) as sftp:
            try:
                sftp.get(remote_path, str(local))
            except (OSError, paramiko.SSHException) as exc:
                raise RemoteError(self.name, f"get {remote_path} -> {local} failed: {exc}") from exc

    def read_text(self, remote_path: str, *, timeout: float | None = None) -> str:
        """Return a (text) file of the host; missing files raise :class:`RemoteError`."""
        with self._sftp(timeout) as sftp:
            try:
                with sftp.open(remote_path, "rb") as fh:
                    data: bytes = fh.read()
            except (OSError, paramiko.SSHException) as exc:
                raise RemoteError(self.name, f"cannot read {remote_path}: {exc}") from exc
        return data.decode("utf-8", errors="replace")

    def write_text(self, remote_path: str, text: str, *, timeout: float | None = None) -> None:
        with self._sftp(timeout) as sftp:
            try:
                with sftp.open(remote_path, "wb") as fh:
                    fh.write(text.encode())
            except (OSError, paramiko.SSHException) as exc:
                raise RemoteError(self.name, f"cannot write {remote_path}: {exc}") from exc

    # -- sockets ---------------------------------------------------------------------------------

    def open_unix_socket(
        self, path: str, *, timeout: float = 10.0, attach: socket.socket | None = None
    ) -> UnixSocketBridge:
        """Connect to a UNIX socket on the host; return a bridge whose ``.sock`` is local
        (``attach``: pump that socket of the caller's instead of a new one).

        The host needs ``socat``. ``timeout`` bounds the connect; the bridge then lives until closed.
        """
        transport = self._transport()
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(quote_argv(["socat", "-", f"UNIX-CONNECT:{path}"]))
        except (paramiko.SSHException, OSError) as exc:
            raise RemoteError(self.name, f"cannot open a channel to {path}: {exc}") from exc
        return UnixSocketBridge(self.name, path, channel, attach)


@dataclass
class UnixSocketBridge:
    """A paramiko channel pumped into a local socket pair. Close it to stop the pump."""

    host: str
    path: str
    channel: paramiko.Channel
    sock: socket.socket = field(init=False)
    _inner: socket.socket = field(init=False)
    _thread: threading.Thread = field(init=False)
    _closed: threading.Event = field(init=False)

    attach: socket.socket | None = None
    """A socket of the caller's (an accepted connection) to pump instead of a new pair."""

    def __post_init__(self) -> None:
        if self.attach is not None:
            self.sock = self._inner = self.attach
        else:
            self.sock, self._inner = socket.socketpair()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._pump, name=f"bridge {self.host}:{self.path}", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        chan, inner = self.channel, self._inner
        try:
            while not self._closed.is_set():
                readable, _, _ = select.select([chan.fileno(), inner.fileno()], [], [], 0.5)
                if chan.fileno() in readable:
                    data = chan.recv(65536)
                    if not data:
                        break
                    inner.sendall(data)
                if inner.fileno() in readable:
                    data = inner.recv(65536)
                    if not data:
                        break
                    chan.sendall(data)
        except OSError:
            pass  # the other side went away: the socket user sees EOF below
        finally:
            with contextlib.suppress(OSError):
                inner.shutdown(socket.SHUT_RDWR)
            chan.close()

    @property
    def alive(self) -> bool:
        """False once the channel or the local end went away (e.g. the SSH connection died)."""
        return self._thread.is_alive() and not self.channel.closed

    def stderr(self) -> str:
        """What socat said on the host (why a connect failed)."""
        if self.channel.recv_stderr_ready():
            return self.channel.recv_stderr(4096).decode(errors="replace")
        return ""

    def close(self) -> None:
        """Stop the pump and close both ends. Idempotent."""
        self._closed.set()
        self._thread.join(timeout=2)
        for sock in (self.sock, self._inner):
            with contextlib.suppress(OSError):
                sock.close()
        self.channel.close()

    def __enter__(self) -> UnixSocketBridge:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _bound_transport(
    transport: paramiko.Transport, keepalive_s: int, dead_after_s: float, open_timeout_s: float
) -> None:
    """A dead peer ends the connection within about ``keepalive_s + dead_after_s``: keepalives
    keep data in flight, and the kernel aborts a connection whose data stays unacknowledged for
    ``dead_after_s`` (``TCP_USER_TIMEOUT``; TCP retransmits for ~15 min otherwise), which wakes
    every waiting channel. Opening a channel waits twice ``open_timeout_s``, not paramiko's hour."""
    if keepalive_s:
        transport.set_keepalive(keepalive_s)
    transport.channel_timeout = 2 * open_timeout_s  # a loaded (TCG) host opens channels slowly
    sock = transport.sock
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError, AttributeError):  # TCP_USER_TIMEOUT: Linux only
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after_s * 1000))


class RemotePool:
    """One :class:`Remote` per host for the lifetime of the pool (a test session)."""

    def __init__(self, hosts: Sequence[Host]) -> None:
        self._hosts = {h.name: h for h in hosts}
        self._remotes: dict[str, Remote] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Remote:
        with self._lock:
            remote = self._remotes.get(name)
            if remote is None:
                remote = Remote(self._hosts[name])
                self._remotes[name] = remote
            return remote

    def close(self) -> None:
        """Close every connection. Idempotent."""
        with self._lock:
            remotes, self._remotes = list(self._remotes.values()), {}
        for remote in remotes:
            remote.close()

    def __enter__(self) -> RemotePool:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
