"""JSON-RPC: the user endpoint, the engine API and their authentication."""
