"""Shared helpers of the tests that run the service as real processes."""
