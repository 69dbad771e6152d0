"""Framebuffer capture from QEMU's VNC server (RFB 3.8, no authentication, raw encoding).

The path graphics capture takes for dma-buf displays (GVT-g with ``display=on`` behind
egl-headless), where QMP ``screendump`` has no surface. QEMU listens on a UNIX socket in the
machine's directory (``-vnc unix:...``); the controller reaches it through the SSH socket bridge.
"""

from __future__ import annotations

import socket
import struct
import time
from io import BytesIO

import numpy as np
from PIL import Image

from mdevtest.errors import CheckFailed
from mdevtest.qemu.machine import RemoteMachine

_PIXEL_FORMAT = struct.pack(
    ">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0
)  # 32 bpp, depth 24, little-endian, true colour, 8 bits per channel: B,G,R,X in memory


def _read(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CheckFailed(f"vnc: timed out reading {n} bytes (got {len(buf)})")
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise CheckFailed("vnc: the server closed the connection")
        buf += chunk
    return bytes(buf)


def rfb_capture(sock: socket.socket, *, timeout: float = 30.0) -> Image.Image:
    """One full framebuffer over an already connected RFB stream."""
    deadline = time.monotonic() + timeout
    version = _read(sock, 12, deadline)
    if not version.startswith(b"RFB 003."):
        raise CheckFailed(f"vnc: not an RFB server: {version!r}")
    sock.sendall(b"RFB 003.008\n")
    (count,) = _read(sock, 1, deadline)
    if count == 0:
        (length,) = struct.unpack(">I", _read(sock, 4, deadline))
        raise CheckFailed(
            f"vnc: server refused: {_read(sock, length, deadline).decode(errors='replace')}"
        )
    types = _read(sock, count, deadline)
    if 1 not in types:
        raise CheckFailed(f"vnc: server requires authentication (security types {list(types)})")
    sock.sendall(b"\x01")
    (status,) = struct.unpack(">I", _read(sock, 4, deadline))
    if status != 0:
        raise CheckFailed("vnc: security handshake failed")
    sock.sendall(b"\x01")  # ClientInit: shared
    width, height = struct.unpack(">HH", _read(sock, 4, deadline))
    _read(sock, 16, deadline)  # server pixel format: we set ours below
    (name_len,) = struct.unpack(">I", _read(sock, 4, deadline))
    _read(sock, name_len, deadline)
    sock.sendall(b"\x00\x00\x00\x00" + _PIXEL_FORMAT)  # SetPixelFormat
    sock.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw
    sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # full update request
    frame = np.zeros((height, width, 4), dtype=np.uint8)
    covered = 0
    while covered < width * height:
        (kind,) = _read(sock, 1, deadline)
        if kind == 0:  # FramebufferUpdate
            (rects,) = struct.unpack(">xH", _read(sock, 3, deadline))
            for _ in range(rects):
                x, y, w, h, enc = struct.unpack(">HHHHi", _read(sock, 12, deadline))
                if enc != 0:
                    raise CheckFailed(f"vnc: unexpected encoding {enc}")
                data = _read(sock, w * h * 4, deadline)
                frame[y : y + h, x : x + w] = np.frombuffer(data, dtype=np.uint8).reshape(h, w, 4)
                covered += w * h
        elif kind == 1:  # SetColourMapEntries
            _, n = struct.unpack(">xHH", _read(sock, 5, deadline))
            _read(sock, 6 * n, deadline)
        elif kind == 2:  # Bell
            continue
        elif kind == 3:  # ServerCutText
            (length,) = struct.unpack(">xxxI", _read(sock, 7, deadline))
            _read(sock, length, deadline)
        else:
            raise CheckFailed(f"vnc: unexpected server message {kind}")
    rgb = frame[..., [2, 1, 0]]  # B,G,R,X -> R,G,B
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def vnc_capture_png(machine: RemoteMachine, *, timeout: float = 30.0) -> bytes:
    """A PNG of ``machine``'s display read from its VNC server."""
    with machine.remote.open_unix_socket(machine.paths.vnc_sock, timeout=timeout) as bridge:
        image = rfb_capture(bridge.sock, timeout=timeout)
    buf = BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
