"""Interpretability evaluations of dictionaries: how well their latents can be explained and probed."""
