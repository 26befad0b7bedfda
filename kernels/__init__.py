"""Triton kernels of gedi_fast: one module per op (kernels, host launchers, registered ops).

Importing this package never imports triton: each kernel module does, so `import gedi_fast` works
on machines without triton.
"""
