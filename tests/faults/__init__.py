"""Fault tests (issue 9): SIGKILL during ingest, a full disk, a soak, two servers on one index."""
