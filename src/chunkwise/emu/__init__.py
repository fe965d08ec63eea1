"""Bit-exact host emulation of ESP-DL's integer kernels."""
