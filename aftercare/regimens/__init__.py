"""Regimens as data: declarative YAML files under ``schedules/``, loaded and validated here."""
