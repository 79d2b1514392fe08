"""The bias study: CVR debiasing measured against a known truth (bias_study.py; README.md)."""
