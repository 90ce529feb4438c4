# Corral host agent: one per client node that runs sandboxes (system job).
# Each node needs its own host token (the host id is derived from it):
#   docker compose exec auth python -m services.auth bootstrap ...  or  POST /v1/hosts/tokens
#   nomad var put nomad/jobs/corral-host-agent/<node name> token=<host token>
#   nomad var put nomad/jobs/corral-host-agent ca=@secrets/tls/ca.pem   # the bus's CA (TLS)
# Client plugin config must allow it: plugin "docker" { config { allow_privileged = true } }
# The agent talks to NATS by address; state and guest images live on the node.

variable "image" {
  type    = string
  default = "registry.example.internal/corral-host-agent:latest"
}

variable "nats_url" {
  type    = string
  default = "tls://corral-nats.service.consul:4222"
}

job "corral-host-agent" {
  datacenters = ["dc1"]
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

    task "host-agent" {
      driver       = "docker"
      kill_timeout = "60s" # let it stop VMs and record state

      config {
        image        = var.image
        command      = "python"
        args         = ["-m", "services.host_agent"]
        privileged   = true   # KVM, TAP devices, bridges and nft rules
        network_mode = "host" # VMs' bridge and NAT live in the node's namespace
        devices = [
          { host_path = "/dev/kvm" },
          { host_path = "/dev/net/tun" },
        ]
        volumes = [
          "/var/lib/corral:/var/lib/corral",
          "/var/cache/corral/images:/root/.cache/corral/images",
        ]
      }

      env {
        CORRAL_NATS_URL    = var.nats_url
        CORRAL_NATS_CA_FILE = "/secrets/ca.pem"
        CORRAL_STATE_DIR   = "/var/lib/corral"
        CORRAL_HEALTH_PORT = "9091"
        CORRAL_HOSTNAME    = "${node.unique.name}"
      }

      template {
        data        = <<-EOT
          {{ with nomadVar (printf "nomad/jobs/corral-host-agent/%s" (env "node.unique.name")) }}CORRAL_HOST_TOKEN={{ .token }}{{ end }}
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
