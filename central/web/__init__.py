"""The HQ dashboard and JSON API (Starlette)."""
