"""Built-in offline data: corpora that need no download (DESIGN.md, "Offline by default")."""
