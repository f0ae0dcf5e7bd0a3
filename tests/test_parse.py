"""The pure parsers and formatters: tables of real kernel text, and hypothesis properties."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgoom import (
    CgroupEvents,
    InvalidValue,
    MemoryEvents,
    ParseError,
    Pressure,
    PressureLine,
    SwapEvents,
    parse_size,
)
from cgoom._kernel import _parse as p

SRC = "/sys/fs/cgroup/t/file"
keys = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
counters = st.integers(min_value=0, max_value=2**64 - 1)


class TestSingleValues:
    @pytest.mark.parametrize(("text", "value"), [("0\n", 0), ("4096\n", 4096), ("max\n", "max"),
                                                 ("18446744073709551615\n", 2**64 - 1)])
    def test_parse_limit(self, text: str, value: object) -> None:
        assert p.parse_limit(text, SRC) == value

    @pytest.mark.parametrize("text", ["", "\n", "-1\n", "12M\n", "maxx\n", "1 2\n", "٣\n"])
    def test_parse_limit_garbage_names_file_and_text(self, text: str) -> None:
        with pytest.raises(ParseError) as info:
            p.parse_limit(text, SRC)
        assert str(info.value).startswith(SRC)
        assert repr(text) in str(info.value)
        assert info.value.path == SRC

    @given(st.integers(min_value=0, max_value=2**64 - 1))
    def test_limit_round_trip(self, n: int) -> None:
        assert p.parse_limit(p.format_limit(n, SRC) + "\n", SRC) == n

    def test_bool(self) -> None:
        assert p.parse_bool("1\n", SRC) is True
        assert p.parse_bool("0\n", SRC) is False
        with pytest.raises(ParseError, match="expected 0 or 1"):
            p.parse_bool("2\n", SRC)


class TestSizes:
    @pytest.mark.parametrize(("given", "expected"), [
        (0, 0), (4096, 4096), ("512M", 512 << 20), ("1g", 1 << 30), (" 2K ", 2048),
        ("7", 7), ("1E", 1 << 60), ("15E", 15 << 60),
    ])
    def test_accepted(self, given: int | str, expected: int) -> None:
        assert parse_size(given) == expected

    @pytest.mark.parametrize(("given", "reason"), [
        ("512MB", "not a size"), ("1.5G", "not a size"), ("0x10", "not a size"),
        ("-1", "not a size"), (-1, "negative"), ("16E", "larger than the kernel"),
        (2**64, "larger than the kernel"), (True, "bool"), (1.0, "float"), ("", "not a size"),
        ("max", "not a size"),
    ])
    def test_refused_with_reason(self, given: object, reason: str) -> None:
        with pytest.raises(InvalidValue, match=reason) as info:
            parse_size(given)  # type: ignore[arg-type]
        assert info.value.value is not None

    def test_format_limit_max(self) -> None:
        assert p.format_limit("max", SRC) == "max"
        assert p.format_limit("64M", SRC) == str(64 << 20)

    @given(st.integers(min_value=0, max_value=2**20), st.sampled_from("kKmMgG"))
    def test_suffix_is_power_of_1024(self, n: int, suffix: str) -> None:
        shift = {"k": 10, "m": 20, "g": 30}[suffix.lower()]
        assert parse_size(f"{n}{suffix}") == n << shift


MEMORY_EVENTS_61 = "low 0\nhigh 37\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n"


class TestMemoryEvents:
    def test_linux_6_1(self) -> None:
        assert p.parse_memory_events(MEMORY_EVENTS_61, SRC) == MemoryEvents(
            low=0, high=37, max=2, oom=1, oom_kill=1, oom_group_kill=0)

    def test_linux_5_15_has_no_oom_group_kill(self) -> None:
        ev = p.parse_memory_events("low 0\nhigh 0\nmax 0\noom 0\noom_kill 3\n", SRC)
        assert ev.oom_group_kill is None and ev.sock_throttled is None and ev.oom_kill == 3

    def test_newer_keys_are_kept(self) -> None:
        ev = p.parse_memory_events(MEMORY_EVENTS_61 + "sock_throttled 4\nfuture_thing 9\n", SRC)
        assert ev.sock_throttled == 4
        assert ev.extra == {"future_thing": 9}

    def test_missing_required_key(self) -> None:
        with pytest.raises(ParseError, match="missing oom_kill"):
            p.parse_memory_events("low 0\nhigh 0\nmax 0\noom 0\n", SRC)

    @given(st.dictionaries(keys, counters, max_size=8), st.lists(counters, min_size=5, max_size=5))
    def test_unknown_keys_survive_in_any_order(self, unknown: dict[str, int],
                                               base: list[int]) -> None:
        known = dict(zip(["low", "high", "max", "oom", "oom_kill"], base, strict=True))
        unknown = {k: v for k, v in unknown.items()
                   if k not in known and k not in ("oom_group_kill", "sock_throttled")}
        lines = [f"{k} {v}" for k, v in {**unknown, **known}.items()]
        ev = p.parse_memory_events("\n".join(lines) + "\n", SRC)
        assert ev.extra == unknown
        assert (ev.low, ev.high, ev.max, ev.oom, ev.oom_kill) == tuple(base)

    @pytest.mark.parametrize("text", ["low\n", "low 1 2\n", "low -1\n", "low x\n"])
    def test_garbage_line_is_quoted(self, text: str) -> None:
        with pytest.raises(ParseError, match="line 1 is not 'key value'"):
            p.parse_memory_events(text, SRC)


class TestOtherKeyedFiles:
    def test_swap_events(self) -> None:
        assert p.parse_swap_events("high 1\nmax 2\nfail 3\n", SRC) == SwapEvents(max=2, fail=3,
                                                                                 high=1)
        assert p.parse_swap_events("max 0\nfail 0\n", SRC).high is None  # before 5.8

    def test_cgroup_events(self) -> None:
        assert p.parse_cgroup_events("populated 1\nfrozen 0\n", SRC) == CgroupEvents(True, False)
        assert p.parse_cgroup_events("populated 0\n", SRC).frozen is None  # before 5.2

    def test_memory_stat_keeps_every_key(self) -> None:
        stat = p.parse_memory_stat("anon 4096\nfile 8192\nbrand_new 1\n", SRC)
        assert stat.anon == 4096 and stat.file == 8192 and stat.kernel is None
        assert dict(stat) == {"anon": 4096, "file": 8192, "brand_new": 1}
        assert len(stat) == 3
        assert stat["brand_new"] == 1
        assert sorted(stat.values()) == [1, 4096, 8192]  # a real Mapping

    def test_pressure(self) -> None:
        text = ("some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\n"
                "full avg10=0.00 avg60=0.00 avg300=0.00 total=42\n")
        assert p.parse_pressure(text, SRC) == Pressure(
            some=PressureLine(1.5, 0.25, 0.0, 123456), full=PressureLine(0.0, 0.0, 0.0, 42))

    def test_pressure_without_full(self) -> None:
        text = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        assert p.parse_pressure(text, SRC).full is None

    @pytest.mark.parametrize(("text", "match"), [
        ("full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", "no 'some' line"),
        ("some avg10=0.00 total=0\n", "needs avg10= avg60= avg300= total="),
        ("some avg10=x avg60=0 avg300=0 total=0\n", "needs"),
        ("some avg10\n", "is not 'name=value'"),
    ])
    def test_pressure_garbage(self, text: str, match: str) -> None:
        with pytest.raises(ParseError, match=match):
            p.parse_pressure(text, SRC)

    def test_pids_and_controllers(self) -> None:
        assert p.parse_pids("1\n42\n", SRC) == (1, 42)
        assert p.parse_pids("", SRC) == ()
        with pytest.raises(ParseError, match="not a process id"):
            p.parse_pids("1\nx\n", SRC)
        assert p.parse_controllers("cpu io memory pids\n", SRC) == {"cpu", "io", "memory", "pids"}
        assert p.parse_controllers("\n", SRC) == frozenset()

    def test_cgroup_type(self) -> None:
        assert p.parse_cgroup_type("domain threaded\n", SRC) == "domain threaded"
        with pytest.raises(ParseError, match="unknown cgroup type"):
            p.parse_cgroup_type("weird\n", SRC)

    def test_format_controllers(self) -> None:
        assert p.format_controllers(frozenset({"pids", "memory"}), frozenset({"io"}), SRC) == \
            "+memory +pids -io"
        with pytest.raises(InvalidValue, match="both enable and disable memory"):
            p.format_controllers(frozenset({"memory"}), frozenset({"memory"}), SRC)
        with pytest.raises(InvalidValue, match="not a controller name"):
            p.format_controllers(frozenset({"+memory"}), frozenset(), SRC)


class TestMountinfo:
    def test_cgroup2_options_and_escapes(self) -> None:
        text = ("22 1 0:21 / / rw - ext4 /dev/vda rw\n"
                "31 22 0:28 / /sys/fs/cg\\040x rw,nosuid - cgroup2 cgroup2 "
                "rw,nsdelegate,memory_recursiveprot\n")
        mounts = p.parse_mountinfo(text, "/proc/self/mountinfo")
        assert mounts[1] == ("/sys/fs/cg x", "cgroup2",
                             frozenset({"rw", "nosuid", "nsdelegate", "memory_recursiveprot"}))

    def test_garbage(self) -> None:
        with pytest.raises(ParseError, match="not a mountinfo line"):
            p.parse_mountinfo("nonsense\n", "/proc/self/mountinfo")


@given(st.text(max_size=200))
def test_parsers_only_raise_parse_error(text: str) -> None:
    """Whatever the text, a parser returns a value or raises ParseError, nothing else."""
    for parser in (p.parse_limit, p.parse_memory_events, p.parse_swap_events,
                   p.parse_cgroup_events, p.parse_memory_stat, p.parse_pressure, p.parse_pids,
                   p.parse_controllers, p.parse_cgroup_type, p.parse_bool, p.parse_mountinfo):
        error = None
        try:
            parser(text, SRC)
        except ParseError as exc:
            error = exc
        assert error is None or error.path == SRC


def test_records_are_read_only_and_hashable() -> None:
    events = p.parse_memory_events("low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\nnew_key 5\n", "f")
    assert hash(events) == hash(p.parse_memory_events(
        "low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\nnew_key 5\n", "f"))
    with pytest.raises(TypeError, match="read-only"):
        events.extra["new_key"] = 6  # type: ignore[index]
    stat = p.parse_memory_stat("anon 1\nfile 2\n", "f")
    with pytest.raises(TypeError, match="read-only"):
        stat.data.clear()  # type: ignore[attr-defined]
    assert json.loads(json.dumps(attrs.asdict(events)))["extra"] == {"new_key": 5}
    import cgoom

    changed = cgoom.MemoryEventsChanged("/a", False, {"high": 3}, events, 1.0)
    with pytest.raises(TypeError, match="read-only"):
        changed.delta["high"] = 99  # type: ignore[index]
    assert hash(changed)


@pytest.mark.parametrize("text", ["\u0663M", "\uff13", "1_000", "+7", "３G"])
def test_sizes_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(InvalidValue, match="is not a size"):
        p.parse_size(text, "memory.max")
