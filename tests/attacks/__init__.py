"""Hostile input: one case per attack, named after it, with the reason code warden must answer."""
