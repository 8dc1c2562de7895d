"""Checked-in genesis files (package data)."""
