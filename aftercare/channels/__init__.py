"""Channels: one small module per provider, all behind the interface in ``base``."""
