"""The engine: step registry, planning, fingerprints, the Parquet store and the runner."""
