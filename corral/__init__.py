"""Corral's server-side tools: the server commands of `corral`, the dev-stack
supervisor, the compose harness. The client SDK is `corral_sdk` (sdk/python)."""
