"""Workflows: the investigation's phases end to end. Each runs diagnostics and training in
order, writes the run records and returns them: diagnose, validate, retrain (sweeps),
inventory audits and scoring predictions made elsewhere."""
