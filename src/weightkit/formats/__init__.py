"""Byte-level parsers and guards shared by the readers and the scanner; they import nothing of
weightkit but errors and dtypes."""
