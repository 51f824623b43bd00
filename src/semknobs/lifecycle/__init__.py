"""Promotion of registered models."""
