"""Saving and loading weights: atomic, hashed safetensors (:func:`save`), loading into a live
model (:func:`load_into`), checking a file's hashes (:func:`verify`)."""

from .save import LoadReport, VerifyReport, load_into, save, verify

__all__ = ["save", "load_into", "verify", "LoadReport", "VerifyReport"]
