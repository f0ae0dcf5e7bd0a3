"""The one errno translation point: each errno to the error class a caller reacts to."""

from __future__ import annotations

import errno
import os

import pytest

import cgoom
from cgoom._kernel._fs import translate_os_error
from cgoom.testing import FakeCgroupTree


@pytest.mark.parametrize(("code", "cls"), [
    (errno.ENODEV, cgoom.CgroupGone),
    (errno.ESRCH, cgoom.ProcessGone),
    (errno.EACCES, cgoom.PermissionDenied),
    (errno.EPERM, cgoom.PermissionDenied),
    (errno.EINVAL, cgoom.InvalidValue),
    (errno.ERANGE, cgoom.InvalidValue),
    (errno.EBUSY, cgoom.CgroupBusy),
    (errno.EOPNOTSUPP, cgoom.NotSupported),
    (errno.EIO, cgoom.CgoomError),
])
def test_errno_classes(tree: FakeCgroupTree, code: int, cls: type[cgoom.CgoomError]) -> None:
    cg = tree.add("lab")
    path = os.path.join(cg.dir, "memory.max")
    err = translate_os_error(OSError(code, os.strerror(code)), tree.fs, path, mount=tree.mount,
                             what="write", value="1G")
    assert type(err) is cls
    assert (err.path, err.value, err.errno) == (path, "1G", code)
    assert str(err).startswith(f"cannot write '1G' to {path}: ")
    assert str(err).endswith(f"({errno.errorcode[code]})")


def test_enoent_is_gone_only_when_the_directory_is_gone(tree: FakeCgroupTree) -> None:
    """psutil's rule: 'gone' only when it truly is gone."""
    cg = tree.add("lab")
    path = os.path.join(cg.dir, "memory.nonexistent")
    err = translate_os_error(FileNotFoundError(errno.ENOENT, "x"), tree.fs, path,
                             mount=tree.mount, what="read")
    assert type(err) is cgoom.NotSupported
    assert "this kernel does not provide it" in str(err)
    tree.remove_behind_our_back("lab")
    err = translate_os_error(FileNotFoundError(errno.ENOENT, "x"), tree.fs, path,
                             mount=tree.mount, what="read")
    assert type(err) is cgoom.CgroupGone


def test_errors_group_by_reaction() -> None:
    assert issubclass(cgoom.ControllerNotEnabled, cgoom.NotSupported)
    assert issubclass(cgoom.MemoryControllerUnavailable, cgoom.NotSupported)
    assert issubclass(cgoom.InvalidValue, ValueError)
    assert issubclass(cgoom.ParseError, ValueError)
    for cls in (cgoom.CgroupGone, cgoom.ProcessGone, cgoom.PermissionDenied, cgoom.CgroupBusy,
                cgoom.NotSupported, cgoom.InvalidValue, cgoom.ParseError):
        assert issubclass(cls, cgoom.CgoomError)
