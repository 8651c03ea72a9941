"""Executable drills: the runbooks, run end to end against a throwaway key (SPEC §9)."""
