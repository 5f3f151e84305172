"""Benchmarks (not tests): run against dicomvault and the real Orthanc side by side."""
