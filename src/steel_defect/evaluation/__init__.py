"""Scoring: the challenge metric and submission validation."""
