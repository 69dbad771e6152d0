"""The Python side of workloads: what runs in the guest is in the top-level ``workloads/`` folder.

Each workload module parses its guest program's output and knows what it reports
(``synthetic``: heartbeats and numbered frames of the lab's synthetic GPU workload, and how to
check what it draws). The rest of the package, in the order a test uses it:

- ``base``: the :class:`~mdevtest.workloads.base.Workload` interface, its definition model,
  samples and results, the :class:`~mdevtest.workloads.base.GuestExec` protocol and the errors;
- ``guestexec``: reaching a guest through qemu-guest-agent, a shell, or its console only;
- ``registry``: ``workloads/*.yaml`` loaded, validated and bound to their drivers by name
  (``get_workload``, ``known_workloads``);
- one driver module per tool: ``synthetic_def``, ``glmark2``, ``heaven``, ``threedmark06``,
  ``media`` (ffmpeg, GStreamer), ``twod`` (x11perf);
- ``sampling``: throughput sampled every second across a migration, and the dip at the
  switchover.
"""
