"""The deciding layer: candidate records (``_candidates``, pure), the snapshots that fill
them (``_snapshot``), the policy contract and the built-in policies (``_policy``, pure), and
finding, validating and guarding policies (``_plugins``).

May import ``_kernel`` and ``_watch``. Nothing is imported here, so that ``import cgoom``
stays lazy.
"""
