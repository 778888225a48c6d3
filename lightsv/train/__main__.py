from lightsv.train.cli import main

raise SystemExit(main())
