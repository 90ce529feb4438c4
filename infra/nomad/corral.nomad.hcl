# Corral control plane on Nomad (docker driver): NATS plus one group per service.
# PostgreSQL is external: store its URL once as a Nomad variable
#   nomad var put nomad/jobs/corral store='postgresql://corral:PASS@db.internal:5432/corral'
# The bus (authenticated, TLS; docs/operations.md): make its credentials once and
# give each group only its own (job/group variables: the implicit task policy reads them)
#   python -m corral secrets init ./secrets --nats-host corral-nats.service.consul \
#     --nats-url tls://corral-nats.service.consul:4222 --nats-tls-dir /secrets --service-ca /secrets/ca.pem
#   nomad var put nomad/jobs/corral/nats conf=@secrets/nats.conf cert=@secrets/tls/server.pem key=@secrets/tls/server-key.pem
#   for g in auth scheduler billing; do nomad var put nomad/jobs/corral/$g env=@secrets/$g.env ca=@secrets/tls/ca.pem; done
#   nomad var put nomad/jobs/corral/api_gateway env=@secrets/gateway.env ca=@secrets/tls/ca.pem
# Build and push the image from infra/Dockerfile (target `control`) first.
# Services register in Consul: script checks (health endpoints bind loopback
# inside each task) need it; Nomad-native discovery supports only http/tcp checks.

variable "image" {
  type    = string
  default = "registry.example.internal/corral:latest"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

locals {
  # Every service finds the store the same way; its bus credentials (and the
  # NATS URL and CA path) come from its own group's variable (see above).
  corral_env = <<-EOT
    {{ with nomadVar "nomad/jobs/corral" }}CORRAL_STORE={{ .store }}
    {{ end }}CORRAL_STATE_DIR=/var/lib/corral
    CORRAL_HEALTH_PORT=9090
    {{ with nomadVar (printf "nomad/jobs/corral/%s" (env "NOMAD_GROUP_NAME")) }}{{ .env }}{{ end }}
    EOT
  bus_ca = <<-EOT
    {{ with nomadVar (printf "nomad/jobs/corral/%s" (env "NOMAD_GROUP_NAME")) }}{{ .ca }}{{ end }}
    EOT
  # Health endpoints bind loopback inside the task: probe from inside it.
  ready_cmd = ["-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/readyz', timeout=3)"]
}

job "corral" {
  datacenters = var.datacenters
  type        = "service"

  group "nats" {
    count = 1

    network {
      port "client" { static = 4222 }
      port "monitor" { to = 8222 }
    }

    volume "nats" {
      type   = "host"
      source = "corral-nats" # client config: host_volume "corral-nats" { path = ... }
    }

    service {
      name     = "corral-nats"
      provider = "consul"
      port     = "client"

      check {
        type     = "http"
        port     = "monitor"
        path     = "/healthz?js-enabled-only=true"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "nats" {
      driver = "docker"

      config {
        image = "nats:2.10-alpine"
        args  = ["-c", "/secrets/nats.conf"] # TLS, max_payload, auth callout, store /data
        ports = ["client", "monitor"]
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/corral/nats\" }}{{ .conf }}{{ end }}"
        destination = "secrets/nats.conf"
        change_mode = "signal"
        change_signal = "SIGHUP" # reload: a rotated issuer or password
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/corral/nats\" }}{{ .cert }}{{ end }}"
        destination = "secrets/server.pem"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/corral/nats\" }}{{ .key }}{{ end }}"
        destination = "secrets/server-key.pem"
        perms       = "0600"
      }

      volume_mount {
        volume      = "nats"
        destination = "/data"
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  group "auth" {
    count = 2 # queue group `auth`: instances share the requests

    service {
      name     = "corral-auth"
      provider = "consul"

      check {
        type     = "script"
        task     = "auth"
        command  = "python"
        args     = local.ready_cmd
        interval = "10s"
        timeout  = "5s"
      }
    }

    task "auth" {
      driver = "docker"

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.auth"]
      }

      template {
        data        = local.corral_env
        destination = "secrets/corral.env"
        env         = true
      }

      template {
        data        = local.bus_ca
        destination = "secrets/ca.pem"
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }

  group "scheduler" {
    count = 1

    service {
      name     = "corral-scheduler"
      provider = "consul"

      check {
        type     = "script"
        task     = "scheduler"
        command  = "python"
        args     = local.ready_cmd
        interval = "10s"
        timeout  = "5s"
      }
    }

    task "scheduler" {
      driver = "docker"

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.scheduler"]
      }

      template {
        data        = local.corral_env
        destination = "secrets/corral.env"
        env         = true
      }

      template {
        data        = local.bus_ca
        destination = "secrets/ca.pem"
      }

      resources {
        cpu    = 300
        memory = 256
      }
    }
  }

  group "billing" {
    count = 1

    service {
      name     = "corral-billing"
      provider = "consul"

      check {
        type     = "script"
        task     = "billing"
        command  = "python"
        args     = local.ready_cmd
        interval = "10s"
        timeout  = "5s"
      }
    }

    task "billing" {
      driver = "docker"

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.billing"]
      }

      template {
        data        = local.corral_env
        destination = "secrets/corral.env"
        env         = true
      }

      template {
        data        = local.bus_ca
        destination = "secrets/ca.pem"
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }

  group "api_gateway" {
    count = 2

    network {
      port "http" { to = 8080 }
    }

    service {
      name     = "corral-api"
      provider = "consul"
      port     = "http"

      check {
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "api_gateway" {
      driver = "docker"

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.api_gateway"]
        ports   = ["http"]
      }

      # Plaintext HTTP beyond loopback: terminate TLS in a proxy in front.
      env {
        CORRAL_HTTP_HOST = "0.0.0.0"
        CORRAL_HTTP_PORT = "8080"
      }

      template {
        data        = local.corral_env
        destination = "secrets/corral.env"
        env         = true
      }

      template {
        data        = local.bus_ca
        destination = "secrets/ca.pem"
      }

      resources {
        cpu    = 500
        memory = 384
      }
    }
  }
}
