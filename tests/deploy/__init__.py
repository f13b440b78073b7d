"""Deployment tests: the files in deploy/ run as docs/deploy.md shows them."""
