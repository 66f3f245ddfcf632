"""Shared text primitives (normalization; later: shingles, MinHash, n-grams)."""
