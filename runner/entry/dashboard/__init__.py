"""The web dashboard `runner serve` serves at `/`: jobs (live), a job's record and log (live),
the fleet; cancel and re-run. Server-rendered (Jinja2) with a little plain JavaScript and CSS,
all served from `static/` by the API itself: no CDN, no build step. See routes.py."""

from runner.entry.dashboard.routes import install, router

__all__ = ["install", "router"]
