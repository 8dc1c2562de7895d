"""Qoin's proof-of-work: the multivariate-quadratic hash and the rules built on it."""
