"""Fleet admins' side: ``roomctl`` (keys, trust roots, signing, pushing, status, audit)."""
