"""The device daemon: ``roomagent run`` (runtime, supervisor, systemd notify, watchdog, state reporter).

Keep this package's top-level imports light: ``roomagent`` imports ``agent.daemon.cli`` on every start.
"""
