"""Check building blocks without a lab: serial continuity, observer arithmetic, the runner, images."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, cast

import pytest
from PIL import Image

from mdevtest.checks.base import Check, CheckContext, Skip, raise_for_failures, run_after, run_before
from mdevtest.checks.graphics import perceptual_similarity
from mdevtest.checks.heartbeat import check_heartbeat_continuity, heartbeat_continuity
from mdevtest.checks.observer import HeartbeatObserver
from mdevtest.errors import CheckFailed, RemoteError
from mdevtest.workloads.synthetic import UDP_FORMAT, UDP_MAGIC, UDP_VERSION, render_expected_frame


def _beats(seqs: range | list[int]) -> str:
    return "".join(f"MDT-HB seq={s} t={s * 20_000_000}\n" for s in seqs)


def test_heartbeat_continuous_across_a_line_cut_at_the_switchover() -> None:
    src = _beats(range(1, 101)) + "MDT-HB seq=101 t=2"  # line cut by the switchover...
    dst = "020000000\n" + _beats(range(102, 150))  # ...and finished on the destination
    report = check_heartbeat_continuity(src, dst)
    assert (report.last_source_seq, report.first_destination_seq, report.missing) == (100, 101, ())


def test_heartbeat_gap_is_named() -> None:
    with pytest.raises(CheckFailed, match=r"missing: 101\.\.103"):
        check_heartbeat_continuity(_beats(range(1, 101)), _beats(range(104, 150)))


def test_heartbeat_stall_on_destination_is_named() -> None:
    with pytest.raises(CheckFailed, match="only 1 heartbeat"):
        check_heartbeat_continuity(_beats(range(1, 101)), _beats([101]))


def test_heartbeat_replay_is_named() -> None:
    assert heartbeat_continuity(_beats(range(1, 101)), _beats(range(95, 150))).duplicated[:2] == (95, 96)


def _datagram(seq: int) -> bytes:
    return struct.pack(UDP_FORMAT, UDP_MAGIC, UDP_VERSION, 0, seq, seq * 1_000_000)


def test_observer_measures_the_largest_gap_lost_and_duplicates() -> None:
    with (
        HeartbeatObserver("127.0.0.1") as observer,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        start = time.monotonic()
        for seq in [1, 2, 3, 3, 4, 8, 9]:  # 3 twice; 5..7 never sent
            if seq == 8:
                time.sleep(0.2)  # the "switchover"
            tx.sendto(_datagram(seq), ("127.0.0.1", observer.port))
            time.sleep(0.002)
        tx.sendto(b"not a heartbeat", ("127.0.0.1", observer.port))
        deadline = time.monotonic() + 5
        while observer.count() < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = observer.analyse(start, time.monotonic() + 1)
    assert seen.received == 7
    assert (seen.lost, seen.duplicated, seen.gap_start_seq) == (3, 1, 4)
    assert seen.observed_downtime_ms is not None
    assert 190 <= seen.observed_downtime_ms < 1000


class _Probe(Check):
    name = "probe"
    category = "downtime"
    method = "test double"

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def after(self, ctx: CheckContext) -> dict[str, Any]:
        if self.outcome == "fail":
            raise CheckFailed("probe: page 7 differs", {"page": 7})
        if self.outcome == "skip":
            raise Skip("nothing to probe")
        if self.outcome == "infra":
            raise RemoteError("host-b", "connection reset")
        return {"ok": True}


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("pass", "passed"), ("fail", "failed"), ("skip", "skipped"), ("infra", "failed")],
)
def test_runner_turns_outcomes_into_results(outcome: str, status: str) -> None:
    ctx = cast(CheckContext, type("Ctx", (), {"profile": None, "scratch": {}})())
    check = _Probe(outcome)
    early = run_before([check], ctx)
    result = run_after([check], ctx, already=early)["probe"]
    assert result.status == status
    assert result.method == "test double"
    if outcome == "fail":
        assert result.values["page"] == 7
        with pytest.raises(CheckFailed, match="page 7 differs"):
            raise_for_failures({"probe": result})
    if outcome == "infra":
        assert result.values["infrastructure"] is True
        assert "host-b" in result.message


def test_perceptual_similarity_orders_scenes() -> None:
    a, b = render_expected_frame(100, 320, 200), render_expected_frame(101, 320, 200)
    other = render_expected_frame(100, 320, 200).rotate(90)
    black = Image.new("RGB", (320, 200))
    assert perceptual_similarity(a, a) == pytest.approx(1.0)
    assert perceptual_similarity(a, b) > 0.9
    assert perceptual_similarity(a, other) < perceptual_similarity(a, b)
    assert perceptual_similarity(a, black) == pytest.approx(0.5)
