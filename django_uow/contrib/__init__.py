"""Integrations with optional third-party packages (each imports its package on use)."""
