"""Tools around the library, not part of a run: the tuned sweep harness, confidence intervals, file locks."""
