"""Typed configuration: the schema every composed config is checked against, and the factor table."""
