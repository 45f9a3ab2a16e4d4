"""Binary transparency: an RFC 9162 Merkle tree, C2SP signed notes and checkpoints, a file-backed log.

A leaf package (it imports nothing of the agent but :mod:`agent.errors`): the control plane's pure
verifier and ``roomctl`` both build on it.
"""
