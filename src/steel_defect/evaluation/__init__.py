"""Scoring: the challenge metric and the error analysis (the CSV format is in data.submission)."""
