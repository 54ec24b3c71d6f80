"""The jobs sluice ships. One module per job; each exposes ``build(settings) -> Job``."""
