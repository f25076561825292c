"""Reliability and security: fault injection, exact resume, safe loading, bad inputs."""
