"""Suite YAML -> validated spec -> expanded runs.

A suite is data written by hand, so it is validated completely before anything runs and
every mistake is reported at once: each :class:`SuiteIssue` names the file and line, the
field (a dotted path such as ``methods[1].grid.bits``), what was expected and, for unknown
names, the near misses. Reading happens in two steps because a suite's ``plugins:`` can add
the very scenarios, methods and tasks the rest of the file names: :func:`read_suite` parses
the YAML and extracts the plugin list, the caller loads those plugins, and
:func:`resolve_suite` validates everything else against the loaded components and expands
the matrix models × tasks × methods (× grid) × seeds into :class:`~harness.api.RunSpec`\\ s.

A run's key hashes its fully resolved config (defaults filled in, method plugin and
version, device and hardware, measure settings) as canonical JSON, so reordering keys in
the YAML, renaming the suite or changing its timeout never invalidates stored results.

The package splits along those seams; import from here, the modules are its layout:

- :mod:`harness.suite.checker`: the generic layer, issues and their lines, pydantic errors
  as issues, values worded as written;
- :mod:`harness.suite.read`: step one, the file and its ``plugins:``;
- :mod:`harness.suite.resolve`: step two, every other field and the run matrix;
- :mod:`harness.suite.exclude`: the ``exclude:`` list;
- :mod:`harness.suite.keys`: what identifies a run (canonical JSON itself is
  :mod:`harness.canonical`, shared with the store).
"""

from harness.canonical import canonical_json
from harness.suite.checker import SuiteError, SuiteIssue
from harness.suite.keys import run_key
from harness.suite.read import SuiteFile, read_suite
from harness.suite.resolve import DEFAULT_TIMEOUT_S, ISOLATIONS, Suite, resolve_suite

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ISOLATIONS",
    "Suite",
    "SuiteError",
    "SuiteFile",
    "SuiteIssue",
    "canonical_json",
    "read_suite",
    "resolve_suite",
    "run_key",
]
