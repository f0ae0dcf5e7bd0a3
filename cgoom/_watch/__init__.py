"""The watching layer: event records (``_events``, pure) and the watcher that produces them
from inotify and PSI triggers on the event loop (``_watcher``).

May import ``_kernel``. Nothing is imported here, so that ``import cgoom`` stays lazy.
"""
