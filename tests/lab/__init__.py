"""Tests of the console lab itself: its proxy, its Linux guest and what it starts (a package, as tests/e2e)."""
