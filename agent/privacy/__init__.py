"""Privacy guarantees the device enforces itself, whatever the management plane says (docs/privacy.md).

- ``policy``: the policy body and the keep/tighten/weaken classification;
- ``hpke``: the device HPKE identity and sealing of SFrame base keys (RFC 9180);
- ``keys``: the ``keys`` document body and the key manager (epochs, expiry, policy checks);
- ``sframe_keys``: meeting keys into the SFrame sender/receiver contexts and the media key source;
- ``interventions``: lock/unlock/deprovision, the lawful-order rule, the snapshot gate;
- ``telemetry``: the allow-list for logs and the published state;
- ``guard``: one owner for all of the above on a device; ``wiring`` and ``service`` plug it into the
  control plane and the daemon.
"""
