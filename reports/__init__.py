"""Templates and static assets of the leaderboard site (installed as ``harness_reports``).

``templates/`` holds the jinja2 pages rendered by :mod:`harness.report`; ``static/`` the one
small vendored stylesheet and script copied next to them. Nothing here fetches anything.
"""
