"""Services: the operations the web pages and the CLI call (consoles, inventory, users, access, audit)."""
