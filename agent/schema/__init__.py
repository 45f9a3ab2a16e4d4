"""The document schema shared by the control plane, privacy, media and the fleet tools.

Models only (pydantic), below every sub-system that reads them, so that dependencies point one way
(``docs/architecture.md``): the policy body (:mod:`agent.schema.policy`) and the meeting key package
body (:mod:`agent.schema.key_package`).
"""
