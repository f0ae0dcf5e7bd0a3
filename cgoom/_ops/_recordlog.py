"""The record log: incident records (and the kernel's own OOM kills) appended to a file as
JSON lines, and read back. Rotation-safe: before each append the path is compared with the
open file (device and inode), so a file moved away by logrotate is followed by a new one at
the path; ``reopen()`` does it at once (on SIGHUP).

Reading rebuilds the frozen records from their JSON (``attrs.asdict`` on the way out): a
small structurer that follows the records' own type hints, so a field added to a record is
read back without a change here.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import sys
import threading
import types
import typing
from collections.abc import Iterator
from typing import IO, Any

import attrs

from .._engine._incident import IncidentRecord
from .._engine._shadow import ShadowVerdict
from .._errors import InvalidValue
from .._kernel._kmsg import KernelOomKill

Record = IncidentRecord | KernelOomKill | ShadowVerdict


@functools.cache
def _names() -> dict[str, Any]:
    """The names the records' annotations use. Not ``vars(sys.modules[cls.__module__])``:
    the public classes are re-labelled ``cgoom`` (whose names load lazily) for tracebacks.
    Every module the records use is imported by this one, so one look is enough."""
    names: dict[str, Any] = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("cgoom._") and module is not None:
            names.update(vars(module))
    return names


def _structure(value: Any, hint: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(value, dict):
            for option in options:
                if attrs.has(option) or typing.get_origin(option) is not None:
                    return _structure(value, option)
        for option in options:
            if typing.get_origin(option) is tuple and isinstance(value, list):
                return _structure(value, option)
        return value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_structure(v, item) for v in value)
    if isinstance(hint, type) and attrs.has(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint, _names())
        kwargs = {}
        for field in attrs.fields(hint):
            if field.name in value and field.init:
                key = field.alias or field.name
                kwargs[key] = _structure(value[field.name], hints.get(field.name, Any))
        return hint(**kwargs)
    return value


def record_from_json(line: str) -> Record:
    """The record one JSON line of the log holds (``IncidentRecord.to_json()``, or a kernel
    OOM kill); :class:`~cgoom.InvalidValue` for a line that is neither."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidValue(f"not a JSON record: {exc}", value=line[:80]) from exc
    if not isinstance(data, dict):
        raise InvalidValue("not a JSON record: not an object", value=line[:80])
    kinds: dict[object, type[Record]] = {"kernel-oom-kill": KernelOomKill,
                                         "shadow": ShadowVerdict}
    kind = kinds.get(data.get("kind"), IncidentRecord)
    data.pop("kind", None)
    try:
        record: Record = _structure(data, kind)
    except (TypeError, ValueError) as exc:
        raise InvalidValue(f"not a cgoom record: {exc}", value=line[:80]) from exc
    return record


def record_to_json(record: Record) -> str:
    """One JSON line; a kernel OOM kill is marked ``"kind": "kernel-oom-kill"``."""
    data = attrs.asdict(record)
    if isinstance(record, KernelOomKill):
        data["kind"] = "kernel-oom-kill"
    elif isinstance(record, ShadowVerdict):
        data["kind"] = "shadow"
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


class RecordLog:
    """Appends records to ``path`` as JSON lines (a handler listener:
    ``handler.add_listener(log.write)``). Each line is written with one ``write`` call on a
    file opened ``O_APPEND``, and flushed. Any thread may write (the stall watchdog writes
    from its own)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.RLock()

    def _open(self) -> IO[str]:
        # Never through a symlink (cgoom runs as root: one planted at the path would have it
        # append to /etc/ld.so.preload), and only to a regular file of cgoom's own user.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(exc.errno, "a symlink: the record log is never written "
                              "through one", self.path) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise OSError(errno.EPERM, f"not a regular file of uid {os.geteuid()} (uid "
                          f"{st.st_uid}, mode {st.st_mode:o}): the record log is not "
                          "written there", self.path)
        file = os.fdopen(fd, "a", encoding="utf-8")
        self._file, self._identity = file, (st.st_dev, st.st_ino)
        return file

    def reopen(self) -> None:
        """Close and open the path again (after the file was rotated)."""
        with self._lock:
            self.close()
            self._open()

    def write(self, record: Record) -> None:
        line = record_to_json(record) + "\n"
        with self._lock:
            file = self._file
            try:
                st = os.lstat(self.path)
                moved = (st.st_dev, st.st_ino) != self._identity
            except FileNotFoundError:
                moved = True
            if file is None or moved:
                self.close()
                file = self._open()
            file.write(line)
            file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_records(path: str) -> Iterator[Record]:
    """The records in a log file, oldest first; a line that is not a record is an
    :class:`~cgoom.InvalidValue` naming the file and the line number."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield record_from_json(line)
            except InvalidValue as exc:
                raise InvalidValue(f"{path}, line {number}: {exc}", path=path) from exc
