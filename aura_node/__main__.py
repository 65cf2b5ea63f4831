from aura_node.cli import main

raise SystemExit(main())
