from flightllm.cli import main

raise SystemExit(main())
