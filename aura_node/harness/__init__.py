"""The multi-node test harness: local clusters of real node processes, faults, checkers.

Public surface (import from the submodules; this package imports nothing heavy itself):

- ``harness.cluster``: ``Cluster`` (processes and files of a local cluster, fault calls) and
  ``NodeHandle`` (one node: ``ctl``, logs, pid).
- ``harness.faults``: the fault model (``Shaping``, partition modes), pure.
- ``harness.proxy``: the loopback fault proxy process; ``harness.proxy_client.ProxyClient``.
- ``harness.procs``: background process management (``ManagedProcess``, ``ExitReport``).
- ``harness.invariants``: checkers over the journals of all nodes after a run.
- ``harness.trace``: sequence diagrams of real sessions rebuilt from the journals.
- ``harness.progress``: live status line on a terminal, periodic lines otherwise.
- ``harness.pytest_plugin``: the ``cluster_factory`` fixture.
"""
