"""The gateway: validates jobs, orchestrates generator and swapper, streams job events."""
