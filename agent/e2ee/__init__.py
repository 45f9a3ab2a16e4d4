"""End-to-end media encryption: SFrame (RFC 9605) frames, sender/receiver contexts, §5.1 ratchet.

Submodules: :mod:`agent.e2ee.sframe` (stateless conformance API and errors), :mod:`agent.e2ee.header`
(§4.3), :mod:`agent.e2ee.suites` (§4.4.2, §4.5), :mod:`agent.e2ee.context` (stateful contexts, CTR
persistence, anti-replay), :mod:`agent.e2ee.ratchet` (§5.1 sender keys).
"""
