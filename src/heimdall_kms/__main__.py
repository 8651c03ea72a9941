"""``python -m heimdall_kms`` runs the command line."""

from heimdall_kms.cli import main

main()
