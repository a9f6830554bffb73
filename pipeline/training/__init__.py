"""Training the research's own reference models (paper appendix E), saved to load like hub models."""
