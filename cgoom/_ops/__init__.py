"""Operations: what ``cgoom run`` adds around the engine: the configuration, the daemon,
sd_notify, the journal, the record log, metrics, privileges and self-protection.

May import every layer below it. Nothing is imported here, so that ``import cgoom`` stays
lazy.
"""
