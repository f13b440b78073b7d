"""Browser tests on the console lab (a package, so its module names never clash with tests/)."""
