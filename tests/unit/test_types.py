"""The signatures demand the protocol's enums: a bare literal does not type-check.

A close code, an ``error`` code or a partner reason passed as a plain int or
string is refused by mypy wherever the server takes one (the hub, the
session's events and effects, the protocol's messages), so the enums in
``codes.py`` cannot be bypassed by a literal that merely has the right
value. mypy runs here on a small snippet against the package's source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

SOURCE = Path(__file__).parents[2]

SNIPPET = """\
from omiro_trio import protocol
from omiro_trio.codes import CloseCode, ErrorCode, PartnerReason
from omiro_trio.hub import Hub, Session
from omiro_trio.session_events import Close, CloseAsked, MatchEnded


def enums(hub: Hub, session: Session) -> None:
    hub.close(session, CloseCode.SLOW_CONSUMER, "slow consumer", PartnerReason.TIMEOUT)
    protocol.error_frame(ErrorCode.BAD_JSON, "not JSON", None)
    Close(CloseCode.NORMAL, "")
    CloseAsked(CloseCode.POLICY, "banned", PartnerReason.LEFT)
    MatchEnded("m1", PartnerReason.NEXT)
    protocol.PartnerDisconnected(PartnerReason.REPORTED)


def literals(hub: Hub, session: Session) -> None:
    hub.close(session, 4008, "slow consumer")  # line 17
    hub.close(session, CloseCode.GOING_AWAY, "no pong", "timeout")  # line 18
    protocol.error_frame("bad_json", "not JSON", None)  # line 19
    Close(1000, "")  # line 20
    CloseAsked(CloseCode.POLICY, "banned", "left")  # line 21
    MatchEnded("m1", "next")  # line 22
    protocol.PartnerDisconnected("reported")  # line 23
"""


def test_types_refuse_bare_close_codes_error_codes_and_partner_reasons(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET, encoding="utf-8")
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {SOURCE}\n", encoding="utf-8")
    out, err, status = api.run(
        [f"--config-file={config}", f"--cache-dir={tmp_path / 'cache'}", str(snippet)]
    )
    if "omiro_trio" not in out and status == 2:
        pytest.fail(f"mypy did not run: {err}")
    errors = re.findall(r"snippet\.py:(\d+): error: (.*)  \[arg-type\]", out)
    assert [int(line) for line, _ in errors] == [17, 18, 19, 20, 21, 22, 23], out
    expected = ["CloseCode", "PartnerReason", "ErrorCode", "CloseCode"] + ["PartnerReason"] * 3
    assert [message.rsplit('"', 2)[-2] for _, message in errors] == expected, out
