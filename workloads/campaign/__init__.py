"""Campaigns: many runs as one study (matrix, capacity search, statistics)."""
