"""Tools around the library, not part of a run: the tuned sweep harness and its file locks (the confidence
intervals it reports are the library's own, :mod:`lightning_meta.intervals`)."""
