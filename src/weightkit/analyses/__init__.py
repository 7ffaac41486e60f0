"""Analyses: read a WeightSet, return plain result dataclasses; they never print or exit."""
