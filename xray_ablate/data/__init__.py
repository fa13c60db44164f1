"""The data stage: ingest, masks, cache and splits of a Darwin export or an ImageFolder."""
