"""Extraction stage: datasets, models, top-K extraction into logit-cache stores, and training."""
