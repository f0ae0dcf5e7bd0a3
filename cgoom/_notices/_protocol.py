"""The notice protocol, version 1: what cgoom and an application say to each other over the
notice socket (docs/notices.md). Pure: bytes in, typed requests out; values in, bytes out.
The socket itself is :mod:`cgoom._notices._server`'s; the client library is :mod:`cgoom.client`.

One JSON object per line (UTF-8, ``\\n``-terminated, at most :data:`MAX_LINE` bytes), each
with ``"v": 1`` and an ``"op"``.

From the application:

- ``register``: ``cgroup`` (default: the client's own), ``deadline`` (seconds of first
  chance before cgoom acts; absent or null: notices only), ``levels`` (of ``low``,
  ``critical``, ``oom``; default all), ``killable`` (optional: background-killable now);
- ``killable``: ``cgroup``, ``value`` (true: its state is saved, kill it first; false: not);
- ``answer``: ``notice`` (the notice's ``id``), ``status`` (``done`` or ``cannot``),
  ``freed`` (bytes, optional);
- ``unregister``: ``cgroup``.

From cgoom: ``registered`` / ``ok`` (to the request of that ``op``: ``to``), ``error``
(``to``, ``error``: why), ``notice`` (``id``, ``level``, ``domain``, ``cgroup``, ``usage``,
``threshold``, ``reclaim_target``, ``deadline``: null for a level notice, which takes no
answer).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import attrs

from .._kernel._parse import BYTES_MAX

#: The protocol's version: every message carries it as ``"v"``.
VERSION = 1
#: The longest line either side sends, newline included; a longer one ends the connection.
MAX_LINE = 64 * 1024
#: The longest first chance a client may ask for (seconds); a rule's own ``first_chance``
#: bounds it further.
DEADLINE_MAX = 3600
#: What an application may ask (each message's ``"op"``).
OPS = frozenset({"register", "killable", "answer", "unregister"})
#: The levels, least urgent first.
LEVELS: tuple[Literal["low", "critical", "oom"], ...] = ("low", "critical", "oom")
Level = Literal["low", "critical", "oom"]


class ProtocolError(Exception):
    """A message that does not follow the protocol; the text says what is wrong with it
    (it goes back to the client in an ``error`` message)."""


@attrs.frozen
class Register:
    cgroup: str | None
    deadline: float | None
    levels: frozenset[str]
    killable: bool | None


@attrs.frozen
class SetKillable:
    cgroup: str | None
    value: bool


@attrs.frozen
class Reply:
    notice: int
    status: Literal["done", "cannot"]
    freed: int | None


@attrs.frozen
class Unregister:
    cgroup: str | None


Request = Register | SetKillable | Reply | Unregister


def _shown(value: object) -> str:
    """``value`` for an error message, a long one cut (a 4,000-digit number is no message)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _cgroup(message: dict[str, Any]) -> str | None:
    value = message.get("cgroup")
    if value is None:
        return None
    if not isinstance(value, str) or (not value.strip("/") and value != "/") \
            or "\0" in value or ".." in value.split("/") or not _encodable(value):
        raise ProtocolError(f"cgroup {_shown(value)}: a path below the cgroup2 mount, "
                            "e.g. 'workload.slice/batch'")
    return value


def _encodable(text: str) -> bool:
    """JSON's ``\\udcff`` is a lone surrogate: no file name can hold it (os.stat raised)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bool(message: dict[str, Any], key: str) -> bool | None:
    value = message.get(key)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(f"{key} {value!r}: true or false")
    return value


def parse_request(line: bytes) -> Request:
    """The request on ``line`` (one line from the client, its newline included or not);
    :class:`ProtocolError` saying why it is not one."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON object on one line: {exc}") from None
    except RecursionError:  # 30,000 nested '[' in one line
        raise ProtocolError("not a JSON object on one line: nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"not a JSON object: {type(message).__name__}")
    version = message.get("v")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version!r}: this cgoom speaks version "
                            f"{VERSION} ('\"v\": {VERSION}')")
    op = message.get("op")
    if op == "register":
        deadline = message.get("deadline")
        if deadline is not None and (isinstance(deadline, bool)
                                     or not isinstance(deadline, int | float)
                                     # a 4,000-digit int would overflow math.isfinite
                                     or (isinstance(deadline, int)
                                         and not 0 < deadline <= DEADLINE_MAX)
                                     or not math.isfinite(deadline)
                                     or not 0 < deadline <= DEADLINE_MAX):
            raise ProtocolError(f"deadline {_shown(deadline)}: seconds above 0 and at most "
                                f"{DEADLINE_MAX}, or null for notices only")
        levels = message.get("levels", list(LEVELS))
        if not isinstance(levels, list) or not levels \
                or not all(isinstance(x, str) and x in LEVELS for x in levels):
            raise ProtocolError(f"levels {levels!r}: a list of {', '.join(LEVELS)}")
        return Register(_cgroup(message), None if deadline is None else float(deadline),
                        frozenset(levels), _bool(message, "killable"))
    if op == "killable":
        value = _bool(message, "value")
        if value is None:
            raise ProtocolError("killable needs 'value': true or false")
        return SetKillable(_cgroup(message), value)
    if op == "answer":
        notice, status, freed = message.get("notice"), message.get("status"), \
            message.get("freed")
        if isinstance(notice, bool) or not isinstance(notice, int):
            raise ProtocolError(f"notice {notice!r}: the id of the notice answered")
        if status not in ("done", "cannot"):
            raise ProtocolError(f"status {status!r}: 'done' or 'cannot'")
        if freed is not None and (isinstance(freed, bool) or not isinstance(freed, int)
                                  or not 0 <= freed <= BYTES_MAX):
            raise ProtocolError(f"freed {_shown(freed)}: bytes, an integer from 0 to "
                                f"{BYTES_MAX}")
        return Reply(notice, status, freed)
    if op == "unregister":
        return Unregister(_cgroup(message))
    raise ProtocolError(f"op {op!r}: one of register, killable, answer, unregister")


def encode(op: str, **fields: Any) -> bytes:
    """One message, as its line."""
    return (json.dumps({"v": VERSION, "op": op, **fields}, separators=(",", ":"))
            + "\n").encode()
