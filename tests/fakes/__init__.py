"""Wire-level fakes, doing real cryptography, of services that cannot run here (SPEC §10)."""
