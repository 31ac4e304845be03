"""Tuning records per GPU: tuning_logs/<gpu-key>/<op-spec-key>/ (data only)."""
