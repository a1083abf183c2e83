"""Diagnostics: each answers one question about a model or a dataset. Audit under input
conditions, verdicts, backbone and card probes, pair scores (suspects), the class table,
the data check and the scope analysis."""
