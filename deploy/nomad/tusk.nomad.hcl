# tusk: a three-member PostgreSQL HA cluster as one Nomad job, one member
# per client, run by the podman task driver (nomad-driver-podman) on the
# host's network. docs/nomad.md has the commands.
#
# Values to change are marked CHANGE. Secrets and the etcd client
# certificate come from the Nomad variable nomad/jobs/tusk-superman (every
# task of this job may read it):
#   nomad var put nomad/jobs/tusk-superman \
#     superuser_password=... standby_password=... \
#     etcd_ca=@ca.pem etcd_cert=@client-cert.pem etcd_key=@client-cert-key.pem
#
# Stop budget: tusk stops cleanly within TUSK_SHUTDOWN_TIMEOUT (8s) of
# SIGTERM; kill_timeout (15s) must stay above it, and at or below the
# client's max_kill_timeout (30s by default).

job "tusk-superman" {
  # CHANGE: your datacenters.
  datacenters = ["dc1"]
  type        = "service"

  group "tusk" {
    count = 3

    # Host networking: one member per client, on the host's ports.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      mode = "host"
      port "postgresql" {
        static = 5432
      }
      port "api" {
        static = 8008
      }
    }

    # One member at a time; a new replica first copies the leader, which
    # can take hours on a large database.
    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = "30s"
      healthy_deadline  = "2h"
      progress_deadline = "3h"
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    # GET /health on the REST API: 200 while PostgreSQL runs (any role).
    # Route writes with /primary and reads with /replica in your proxy.
    service {
      provider = "nomad"
      name     = "tusk-superman"
      port     = "api"
      tags     = ["postgresql", "superman"]

      check {
        name     = "tusk health"
        type     = "http"
        port     = "api"
        path     = "/health"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "tusk" {
      driver = "podman"

      kill_signal  = "SIGTERM"
      kill_timeout = "15s"

      config {
        # CHANGE if your image is in a registry (docker://registry/tusk:tag).
        image        = "localhost/tusk:latest"
        network_mode = "host"
        # The data directory stays on the client across restarts.
        volumes = [
          "/var/lib/tusk:/home/postgres/pgdata",
        ]
        ulimit {
          nofile = "65536:65536"
        }
      }

      env {
        # CHANGE: the cluster's name and your etcd hosts.
        SCOPE       = "superman"
        PGVERSION   = "15"
        ETCD3_HOSTS = "10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"

        PATRONI_NAME            = "${node.unique.name}"
        PG_CONNECT_ADDRESS      = "${attr.unique.network.ip-address}:5432"
        RESTAPI_CONNECT_ADDRESS = "${attr.unique.network.ip-address}:8008"

        ETCD3_PROTOCOL = "https"
        ETCD3_CACERT   = "/secrets/etcd-ca.pem"
        ETCD3_CERT     = "/secrets/etcd-client-cert.pem"
        ETCD3_KEY      = "/secrets/etcd-client-cert-key.pem"

        TUSK_SHUTDOWN_TIMEOUT = "8s"
      }

      # The passwords, into the task's environment. Letters and digits only
      # (the env file format has no quoting here); a change restarts the task.
      template {
        destination = "secrets/passwords.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/tusk-superman" -}}
          PGPASSWORD_SUPERUSER={{ .superuser_password }}
          PGPASSWORD_STANDBY={{ .standby_password }}
          {{- end }}
        EOT
      }

      # The etcd client certificate; on a change tusk re-reads the files
      # (SIGHUP), without a restart.
      template {
        destination   = "secrets/etcd-ca.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = "{{ with nomadVar \"nomad/jobs/tusk-superman\" }}{{ .etcd_ca }}{{ end }}"
      }
      template {
        destination   = "secrets/etcd-client-cert.pem"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = "{{ with nomadVar \"nomad/jobs/tusk-superman\" }}{{ .etcd_cert }}{{ end }}"
      }
      template {
        destination   = "secrets/etcd-client-cert-key.pem"
        perms         = "600"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = "{{ with nomadVar \"nomad/jobs/tusk-superman\" }}{{ .etcd_key }}{{ end }}"
      }

      resources {
        cpu    = 1000
        memory = 2048
      }
    }
  }
}
