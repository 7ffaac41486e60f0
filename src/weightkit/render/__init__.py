"""Renderers: turn result dataclasses into terminal tables, JSON, HTML or pictures."""
