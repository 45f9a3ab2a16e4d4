from agent.control.standalone import main

raise SystemExit(main())
