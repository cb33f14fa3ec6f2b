"""Sequence-to-sequence translation: data, models, decoding, export and serving."""

__version__ = "0.1.0"
