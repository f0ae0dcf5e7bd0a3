"""Notices for the workloads: the socket protocol (``_protocol``, pure), the notice and
pressure sockets (``_server``) and low-memory-monitor's D-Bus signal (``_dbus``).

May import the layers below it (``_kernel`` to ``_engine``). Nothing is imported here, so that
``import cgoom`` stays lazy.
"""
