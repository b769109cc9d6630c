"""Backups: consistent snapshots, archives, verify and restore, export and import."""
