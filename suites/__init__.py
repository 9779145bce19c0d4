"""The built-in suites, shipped with harness as package data (``harness_suites``).

``harness list suites`` lists them, ``harness run NAME`` runs one by name from any folder,
and ``harness show suite NAME`` prints its YAML to copy and edit. The files are plain data.
"""
