"""The `facegen` command-line client of the gateway."""
