from policyshift.cli import main

raise SystemExit(main())
