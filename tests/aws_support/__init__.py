"""Test doubles for the AWS provider: moto behind a fault-injecting WSGI layer, and an sshd."""
