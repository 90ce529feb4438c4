"""The privileged helper: a root process that does the host agent's
privileged steps (bridge, TAP, nft, cgroups, jails) on request, so that
the agent itself need not be root. `client.HelperClient` is the agent's
side; `services.host_agent.entrypoints.helper` serves it."""
