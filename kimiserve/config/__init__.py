"""Configuration files kimiserve reads at start (beyond the Settings object)."""
