"""The ``ilt`` command line: one click group, every command registered one way."""
