from policyshift.cli import entry

raise SystemExit(entry())
