"""Hydra launchers of this project (Hydra finds them through the shims in hydra_plugins/)."""
