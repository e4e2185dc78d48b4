from saescope.cli import main

raise SystemExit(main())
