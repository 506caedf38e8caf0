"""summary: see the package's design note in bayeslmm/__init__.py."""
