"""Shadow mode: what a dry run would have done, paired with what the kernel's OOM killer
then did in the same domain (:class:`ShadowVerdict`), so that an operator can run cgoom
beside systemd-oomd, earlyoom or the kernel alone and read off whether it would have done
better.

Owns the dry runs' last decisions per domain (:class:`Shadow`). Pure: the handler feeds it
its dry-run records and the kernel's kills (it reads nothing and writes nothing).

When does a kill answer a decision? The first kernel OOM kill in the decision's domain within
:data:`HORIZON` seconds after it: inside the domain by the summary line's ``task_memcg``, or,
when the line could not be read one way only (``KernelOomKill.ambiguous``: a tenant's cgroup
name can hold the line's separators), by its pid among the domain's processes as the dry run
read them. *Agreed* when the kernel killed what cgoom would have: the same process, or one of
the processes of the cgroup cgoom would have killed whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .._kernel._kmsg import KernelOomKill
from .._kernel._paths import inside

if TYPE_CHECKING:
    from .._decide._policy import Victim
    from ._incident import IncidentRecord

#: How long after a dry run's decision a kernel OOM kill in its domain still answers it
#: (seconds): a dry run that saw memory run short names its victim; the kernel acts when
#: the domain reaches memory.max, which may be minutes later.
HORIZON = 600.0


@attrs.frozen
class ShadowVerdict:
    """A dry run's decision (incident ``record`` of ``rule`` in ``domain``: it would have
    killed ``would``, process ``would_pid`` or the cgroup ``whole``) and the kernel's OOM
    kill (``kill``) that followed it by ``lead`` seconds; ``agreed``: the kernel killed what
    cgoom would have."""

    record: str
    rule: str
    domain: str
    would: str
    would_pid: int | None
    whole: bool
    lead: float
    agreed: bool
    kill: KernelOomKill

    def explain(self) -> str:
        what = f"{self.would} (whole)" if self.whole else f"pid {self.would_pid} in {self.would}"
        where = self.kill.task_memcg or self.domain
        return (f"shadow: {'agreed' if self.agreed else 'disagreed'}: cgoom would have killed "
                f"{what} {self.lead:.1f} s before the kernel killed pid {self.kill.pid} "
                f"({self.kill.task}) in {where} (rule {self.rule!r}, dry run {self.record})")

    def __str__(self) -> str:
        return self.explain()


@attrs.frozen
class _Pending:
    """A dry run's record, its first victim, when it decided (monotonic)."""

    record: IncidentRecord
    first: Victim
    decided: float
    #: The victim's processes, and the domain's, as the dry run read them.
    victim_pids: frozenset[int]
    domain_pids: frozenset[int]


class Shadow:
    """The dry runs' last decisions per domain, waiting for the kernel to act."""

    def __init__(self, horizon: float = HORIZON) -> None:
        self.horizon = horizon
        self._pending: dict[str, _Pending] = {}

    def decided(self, record: IncidentRecord, at: float) -> None:
        """A dry run's ``record``, decided at ``at`` (monotonic): the decision to pair."""
        first = record.decision.first
        if not record.dry_run or first is None:
            return
        victim_pids = frozenset(
            pid for c in record.candidates if inside(c.path, first.cgroup) for pid in c.pids)
        self._pending[record.domain] = _Pending(
            record, first, at, victim_pids if first.whole
            else frozenset() if first.pid is None else frozenset({first.pid}),
            frozenset(pid for c in record.candidates for pid in c.pids))

    def kernel_kill(self, kill: KernelOomKill) -> ShadowVerdict | None:
        """The verdict ``kill`` gives on the dry-run decision of its domain, if one waits
        (it is then answered: one verdict per decision)."""
        for domain, pending in list(self._pending.items()):
            lead = kill.time - pending.decided
            if lead > self.horizon:
                del self._pending[domain]
                continue
            here = (inside(kill.task_memcg, domain) if kill.task_memcg is not None
                    else kill.pid in pending.domain_pids)
            if not here or lead < 0:
                continue
            del self._pending[domain]
            first = pending.first
            agreed = kill.pid in pending.victim_pids or (
                first.whole and kill.task_memcg is not None
                and inside(kill.task_memcg, first.cgroup))
            return ShadowVerdict(pending.record.id, pending.record.rule, domain, first.cgroup,
                                 first.pid, first.whole, lead, agreed, kill)
        return None
