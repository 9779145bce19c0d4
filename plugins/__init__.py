"""Built-in method plugins, one package per family; installed as ``harness_plugins``.

Each family talks to the core only through hooks and :mod:`harness.api`, exactly like a
third-party plugin, and registers through the ``harness`` entry-point group.
"""
