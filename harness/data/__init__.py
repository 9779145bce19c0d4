"""Built-in offline data: corpora that need no download.

See docs/architecture.md, "Offline by default".
"""
