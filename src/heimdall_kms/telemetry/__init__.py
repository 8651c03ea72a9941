"""Operational telemetry: log format, request correlation, tracing, and metric export of the
one-shot jobs. The metrics themselves are defined in :mod:`heimdall_kms.metrics` only."""
