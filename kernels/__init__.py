"""Triton kernels of gedi_fast, installed as the subpackage `gedi_fast.kernels`.

Importing this package never imports triton: each kernel module does, so `import gedi_fast` works
on machines without triton.
"""
