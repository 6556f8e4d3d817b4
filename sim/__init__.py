"""Simulators: the bit-exact functional simulator (fsim), its reference models and cycle model, RTL harnesses."""
