"""Synthetic Ali-CCP-shaped impressions with their ground truth (generator.py; command line: generate.py)."""
