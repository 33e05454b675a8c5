"""Hospitals as organisations: their members (data stewards) and their node credentials."""
