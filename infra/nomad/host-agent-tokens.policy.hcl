# Workload-identity policy of job corral-host-agent: each agent reads the host
# tokens (its own, by node name: see host-agent.nomad.hcl) and nothing more.
#   nomad acl policy apply -namespace default -job corral-host-agent \
#     corral-host-agent-tokens infra/nomad/host-agent-tokens.policy.hcl
namespace "default" {
  variables {
    path "corral/hosts/*" {
      capabilities = ["read"]
    }
  }
}
