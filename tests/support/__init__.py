"""Helpers the tests share: synthetic data, fabricated sweeps, a stand-in cross-validation, Ray and trackers."""
