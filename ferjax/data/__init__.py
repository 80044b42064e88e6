"""Datasets: label parsers, TFDS builders and the grain input pipeline."""
