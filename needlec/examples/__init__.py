"""Runnable examples: `python -m needlec.examples.demo`."""
