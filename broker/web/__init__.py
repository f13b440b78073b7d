"""The web layer: blueprints (pages, JSON API, admin), sign-in, sessions, error responses, headers."""
