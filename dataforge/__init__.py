"""dataforge: build LLM post-training datasets from YAML recipes, with per-row lineage."""

__version__ = "0.1.0"
