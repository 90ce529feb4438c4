# Corral host agent: one per client node that runs sandboxes (system job).
#
# Each node needs its own host token (the host id is derived from it). Tokens
# live under corral/hosts/<node name>, a path the job's implicit policy does
# not reach: attach the policy in host-agent-tokens.policy.hcl to this job's
# workload identity first (read on corral/hosts/*, nothing else):
#   nomad acl policy apply -namespace default -job corral-host-agent \
#     corral-host-agent-tokens infra/nomad/host-agent-tokens.policy.hcl
#   nomad var put corral/hosts/<node name> token=<host token>   # one per node
#   nomad var put nomad/jobs/corral-host-agent ca=@secrets/tls/ca.pem   # the bus's CA
# Client plugin config must allow privileged tasks and bind mounts:
#   plugin "docker" { config { allow_privileged = true
#                              volumes { enabled = true } } }
# On nodes without /dev/kvm (VMs then run under TCG, slowly) run with
#   -var kvm=false
# The agent reaches NATS through Consul DNS (the control-plane job registers
# `corral-nats`); state and guest images live on the node.

variable "image" {
  type    = string
  default = "registry.example.internal/corral-host-agent:latest"
}

variable "nats_url" {
  type    = string
  default = "tls://corral-nats.service.consul:4222"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "kvm" {
  type    = bool
  default = true
}

job "corral-host-agent" {
  datacenters = var.datacenters
  type        = "system"

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  group "host-agent" {
    restart {
      attempts = 10
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    service {
      name     = "corral-host-agent"
      provider = "consul"

      check {
        type     = "script"
        task     = "host-agent"
        command  = "python"
        args     = ["-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/readyz', timeout=3)"]
        interval = "10s"
        timeout  = "5s"
      }
    }

    task "host-agent" {
      driver       = "docker"
      kill_timeout = "60s" # let it stop VMs and record state

      config {
        image        = var.image
        command      = "python"
        args         = ["-m", "services.host_agent"]
        privileged   = true   # KVM, TAP devices, bridges and nft rules
        network_mode = "host" # VMs' bridge and NAT live in the node's namespace
        devices = concat([{ host_path = "/dev/net/tun" }],
        var.kvm ? [{ host_path = "/dev/kvm" }] : [])
        volumes = [
          "/var/lib/corral:/var/lib/corral",
          "/var/cache/corral/images:/root/.cache/corral/images",
        ]
      }

      env {
        CORRAL_NATS_URL     = var.nats_url
        CORRAL_NATS_CA_FILE = "/secrets/ca.pem"
        CORRAL_STATE_DIR    = "/var/lib/corral"
        CORRAL_HEALTH_PORT  = "9091"
        CORRAL_HOSTNAME     = "${node.unique.name}"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar (printf "corral/hosts/%s" (env "node.unique.name")) }}CORRAL_HOST_TOKEN={{ .token }}{{ end }}
          EOT
        destination = "secrets/host.env"
        env         = true
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/corral-host-agent\" }}{{ .ca }}{{ end }}"
        destination = "secrets/ca.pem"
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
