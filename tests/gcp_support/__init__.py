"""Test doubles for the GCP provider."""
