"""The engine: rules, what they change on the host and its undo, tripwires and their arming,
the actions and their confirmation, the workloads' first chance and notices, incident
records, the handler that orchestrates them, and the stall watchdog.

May import ``_kernel``, ``_watch`` and ``_decide``. Nothing is imported here, so that
``import cgoom`` stays lazy.
"""
