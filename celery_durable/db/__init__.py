"""Connections, named queries and schema migrations shared by every component."""
