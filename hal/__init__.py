"""Hardware abstraction layer: cameras, encoders and device inventory.

The agent sees only the Protocols and value types exported here; backends (``hal.sim``,
``hal.v4l2``, ``hal.codecs``) implement them. PyAV and ioctl code live only under ``hal/``.
"""
