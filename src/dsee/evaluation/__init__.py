"""Measuring models: E2E text metrics (nlg), significance tests, latency (bench), run reports."""
