"""``python -m bench``: run every measurement and print the table."""

from bench.run import main

raise SystemExit(main())
