"""Special-purpose hardware in Amaranth, generated from a board config."""
