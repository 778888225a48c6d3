"""`python -m lightsv`: the same as the `lightsv` command."""

from lightsv.cli import main

raise SystemExit(main())
