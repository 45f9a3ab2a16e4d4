"""`python -m agent` is `roomagent`."""

from agent.cli import main

raise SystemExit(main())
