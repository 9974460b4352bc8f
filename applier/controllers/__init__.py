"""Detached controllers that keep managed jobs recovered and services served after apply exits."""
