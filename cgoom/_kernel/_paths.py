"""Cgroup paths below the mount: their one spelling, their parent, and "inside".

A path here is what ``/proc/PID/cgroup`` says after ``0::`` (``"/"`` is the mount's root):
absolute, ``/``-separated, never ``..``. Pure: no I/O. Every layer spells and compares paths
through these functions, so "is this path inside that domain" has one answer.
"""

from __future__ import annotations

from .._errors import InvalidValue


def normalize_path(path: str) -> str:
    """``"lab/batch/"``, ``"//lab/./batch"`` -> ``"/lab/batch"``: the one spelling of a cgroup
    path below the mount. Refuses ``..`` so a path never leaves its mount."""
    if not isinstance(path, str):
        raise InvalidValue(f"a cgroup path is a str, not {path!r}", value=repr(path))
    if path == "/" or (path[:1] == "/" and path[-1] != "/" and "//" not in path
                       and "/." not in path):
        return path  # already in the one spelling (the common case, at OOM time)
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise InvalidValue(f"cgroup path {path!r} must not contain '..'", value=path)
    return "/" + "/".join(parts)


def parent_path(path: str) -> str:
    """``"/a/b"`` -> ``"/a"``; ``"/a"`` -> ``"/"``."""
    return path.rsplit("/", 1)[0] or "/"


def inside(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or below it (both in the one spelling)."""
    return top == "/" or path == top or path.startswith(top + "/")


def ancestors_and_self(path: str) -> frozenset[str]:
    """``"/a/b"`` -> ``{"/", "/a", "/a/b"}``."""
    parts = [p for p in path.split("/") if p]
    return frozenset(["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)])
