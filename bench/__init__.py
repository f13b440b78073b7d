"""The benchmark: the broker against the targets of PRODUCT.md, on loopback, in one run."""
