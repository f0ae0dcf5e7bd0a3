"""A cgoom policy plugin: kill the smallest workload first (the cheapest to restart)."""

from collections.abc import Mapping

import attrs

import cgoom


@attrs.frozen
class SmallestFirst:
    """Units by usage, smallest first; units under ``min_usage`` bytes are spared."""

    min_usage: int = 0
    name: str = "smallest-first"

    def __call__(
        self, incident: cgoom.Incident, candidates: Mapping[str, cgoom.CgroupSnapshot]
    ) -> cgoom.Decision:
        chosen = [s for s in cgoom.units(incident, candidates)
                  if (s.usage or 0) >= self.min_usage]
        chosen.sort(key=lambda s: (s.usage or 0, s.path))  # the path breaks ties
        victims = []
        for s in chosen:
            victim = cgoom.make_victim(s, score=-float(s.usage or 0),
                                       reason=f"usage {s.usage} bytes, the smallest", whole=True)
            if victim is not None:
                victims.append(victim)
        return cgoom.Decision(self.name, tuple(victims))
