"""`python -m agent.fleet` is `roomctl`."""

from agent.fleet.cli import main

raise SystemExit(main())
