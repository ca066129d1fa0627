//! `patronictl` inside the image: the binary invoked under that name
//! (a symlink to tusk) parses patronictl's command line and runs it
//! against the cluster of the container's own environment (the daemon's
//! `Config`: SCOPE, NAMESPACE, ETCD3_*, the REST API's credentials), with
//! no configuration file. Output follows Patroni 3.2's `ctl.py`; see
//! `render.rs` for the tables and `commands.rs` for each command.

mod commands;
pub mod edit;
mod prompt;
pub mod render;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::CliError;
use crate::exit::{EXIT_FAILURE, EXIT_OK};
pub use render::Format;

/// The name that selects this command line (basename of argv[0]).
pub const NAME: &str = "patronictl";

/// Whether `argv0` invokes tusk as `patronictl`.
pub fn invoked_as(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0).file_name().is_some_and(|n| n == NAME)
}

#[derive(Debug, Parser)]
#[command(
    name = "patronictl",
    about = "Patroni's control tool, served by tusk from the container's environment",
    disable_version_flag = true
)]
pub struct Ctl {
    /// Not supported: the configuration is the container's environment.
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE", value_name = "CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Not supported: the DCS is the one of the container's environment.
    #[arg(short = 'd', long = "dcs-url", visible_alias = "dcs", env = "DCS_URL", value_name = "DCS_URL")]
    pub dcs_url: Option<String>,
    /// Accept a REST API certificate whatever names it carries (it must
    /// still chain to the configured CA).
    #[arg(short = 'k', long)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// A cluster name argument: the container's SCOPE when left out.
#[derive(Debug, Args)]
pub struct ClusterArg {
    pub cluster_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleChoice {
    Leader,
    Primary,
    #[value(name = "standby-leader")]
    StandbyLeader,
    Replica,
    Standby,
    Any,
    Master,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlushTarget {
    Restart,
    Switchover,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List the Patroni members for a given Patroni
    List {
        cluster_names: Vec<String>,
        /// Show some extra information
        #[arg(short = 'e', long)]
        extended: bool,
        /// Print timestamp
        #[arg(short = 't', long = "timestamp")]
        timestamp: bool,
        /// Output format
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
        /// Auto update the screen every 2 seconds
        #[arg(short = 'W')]
        w: bool,
        /// Auto update the screen every X seconds
        #[arg(short = 'w', long = "watch")]
        watch: Option<f64>,
    },
    /// Prints ASCII topology for given cluster
    Topology {
        cluster_names: Vec<String>,
        /// Auto update the screen every 2 seconds
        #[arg(short = 'W')]
        w: bool,
        /// Auto update the screen every X seconds
        #[arg(short = 'w', long = "watch")]
        watch: Option<f64>,
    },
    /// Switchover to a replica
    Switchover {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The name of the current leader
        #[arg(long, visible_aliases = ["primary", "master"])]
        leader: Option<String>,
        /// The name of the candidate
        #[arg(long)]
        candidate: Option<String>,
        /// Timestamp of a scheduled switchover in unambiguous format (e.g. ISO 8601)
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
    },
    /// Failover to a replica
    Failover {
        #[command(flatten)]
        cluster: ClusterArg,
        /// The name of the current leader (deprecated: makes this a switchover)
        #[arg(long, visible_aliases = ["primary", "master"])]
        leader: Option<String>,
        /// The name of the candidate
        #[arg(long)]
        candidate: Option<String>,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
    },
    /// Disable auto failover
    Pause {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Wait until pause is applied on all nodes
        #[arg(long)]
        wait: bool,
    },
    /// Resume auto failover
    Resume {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Wait until pause is cleared on all nodes
        #[arg(long)]
        wait: bool,
    },
    /// Restart cluster member
    Restart {
        cluster_name: String,
        member_names: Vec<String>,
        /// Restart only members with this role
        #[arg(short = 'r', long, value_enum, default_value = "any")]
        role: RoleChoice,
        /// Restart a single member only
        #[arg(long)]
        any: bool,
        /// Timestamp of a scheduled restart in unambiguous format (e.g. ISO 8601)
        #[arg(long)]
        scheduled: Option<String>,
        /// Restart if the PostgreSQL version is less than provided (e.g. 9.5.2)
        #[arg(long = "pg-version")]
        pg_version: Option<String>,
        /// Restart if pending
        #[arg(long)]
        pending: bool,
        /// Return error and fail over if necessary when restarting takes longer than this.
        #[arg(long)]
        timeout: Option<String>,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
    },
    /// Reinitialize cluster member
    Reinit {
        cluster_name: String,
        member_names: Vec<String>,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
        /// Wait until reinitialization completes
        #[arg(long)]
        wait: bool,
    },
    /// Reload cluster member configuration
    Reload {
        cluster_name: String,
        member_names: Vec<String>,
        /// Reload only members with this role
        #[arg(short = 'r', long, value_enum, default_value = "any")]
        role: RoleChoice,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
    },
    /// Discard scheduled events: flush CLUSTER_NAME [MEMBER_NAMES]... {restart|switchover}
    Flush {
        cluster_name: String,
        /// Member names, then the target: restart or switchover
        #[arg(required = true, value_name = "[MEMBER_NAMES]... {restart|switchover}")]
        rest: Vec<String>,
        /// Flush only members with this role
        #[arg(short = 'r', long, value_enum, default_value = "any")]
        role: RoleChoice,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
    },
    /// Edit cluster configuration (non-interactively: --set, --pg, --apply or --replace)
    EditConfig {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Do not show changes
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Set specific configuration value. Can be specified multiple times
        #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Set specific PostgreSQL parameter value. Shorthand for -s postgresql.parameters. Can be specified multiple times
        #[arg(short = 'p', long = "pg", value_name = "PARAM=VALUE")]
        pg: Vec<String>,
        /// Apply configuration from file. Use - for stdin.
        #[arg(long = "apply", value_name = "FILE")]
        apply: Option<String>,
        /// Apply configuration from file, replacing existing configuration. Use - for stdin.
        #[arg(long = "replace", value_name = "FILE")]
        replace: Option<String>,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
    },
    /// Show cluster configuration
    ShowConfig {
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Show the history of failovers/switchovers
    History {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Output format
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Output version of patronictl command or a running Patroni instance
    Version { cluster_name: Option<String>, member_names: Vec<String> },
    /// Generate a dsn for the provided member, defaults to a dsn of the leader
    Dsn {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Give a dsn of any member with this role
        #[arg(short = 'r', long, value_enum)]
        role: Option<RoleChoice>,
        /// Generate a dsn for this member
        #[arg(short = 'm', long)]
        member: Option<String>,
    },
    /// Not provided by tusk's patronictl (use psql)
    #[command(hide = true)]
    Query {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Not provided by tusk's patronictl
    #[command(hide = true)]
    Remove {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs patronictl's command line (`args` includes argv[0]); returns the
/// exit status: 0, 1 for a failure (`Error: ...` on stderr, as click
/// prints it), 2 for bad usage, 78 for a configuration error.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let ctl = match Ctl::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    report(commands::run(ctl))
}

fn report(r: Result<(), CliError>) -> i32 {
    match r {
        Ok(()) => EXIT_OK,
        Err(CliError::Aborted) => {
            eprintln!("\nAborted!");
            EXIT_FAILURE
        }
        Err(CliError::Failed) => EXIT_FAILURE,
        Err(e) => {
            eprintln!("Error: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Ctl, clap::Error> {
        Ctl::try_parse_from(std::iter::once("patronictl").chain(args.iter().copied()))
    }

    #[test]
    fn argv0_selects_patronictl() {
        assert!(invoked_as(std::ffi::OsStr::new("patronictl")));
        assert!(invoked_as(std::ffi::OsStr::new("/usr/local/bin/patronictl")));
        assert!(!invoked_as(std::ffi::OsStr::new("/usr/local/bin/tusk")));
        assert!(!invoked_as(std::ffi::OsStr::new("patronictl.sh")));
    }

    #[test]
    fn patronictl_options() {
        let c = parse(&["-k", "list", "superman", "-e", "-t", "-f", "json", "-W"]).unwrap();
        assert!(c.insecure);
        match c.command {
            CtlCommand::List { cluster_names, extended, timestamp, format, w, watch } => {
                assert_eq!(cluster_names, ["superman"]);
                assert!(extended && timestamp && w);
                assert_eq!((format, watch), (Format::Json, None));
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["list", "--format", "yml", "--watch", "0.5"]).unwrap();
        assert!(matches!(c.command, CtlCommand::List { format: Format::Yaml, watch: Some(w), .. } if w == 0.5));
        assert!(parse(&["list", "-f", "xml"]).is_err());

        let c =
            parse(&["switchover", "--primary", "n1", "--candidate", "n2", "--scheduled", "now", "--force"]).unwrap();
        match c.command {
            CtlCommand::Switchover { cluster, leader, candidate, scheduled, force } => {
                assert_eq!(cluster.cluster_name, None);
                assert_eq!(
                    (leader.as_deref(), candidate.as_deref(), scheduled.as_deref()),
                    (Some("n1"), Some("n2"), Some("now"))
                );
                assert!(force);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["failover", "superman", "--master", "n1", "--candidate", "n2"]).unwrap();
        assert!(matches!(c.command, CtlCommand::Failover { leader: Some(l), force: false, .. } if l == "n1"));

        let c = parse(&[
            "restart",
            "superman",
            "n1",
            "n2",
            "--role",
            "standby-leader",
            "--pending",
            "--pg-version",
            "15.3",
            "--any",
        ])
        .unwrap();
        match c.command {
            CtlCommand::Restart { cluster_name, member_names, role, any, pending, pg_version, force, .. } => {
                assert_eq!((cluster_name.as_str(), member_names), ("superman", vec!["n1".to_owned(), "n2".to_owned()]));
                assert_eq!(role, RoleChoice::StandbyLeader);
                assert!(any && pending && !force);
                assert_eq!(pg_version.as_deref(), Some("15.3"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["restart"]).is_err(), "restart needs the cluster name, as patronictl's");
        assert!(parse(&["reinit", "superman", "n2", "--force", "--wait"]).is_ok());

        let c = parse(&[
            "edit-config",
            "-s",
            "loop_wait=3",
            "--set",
            "ttl=20",
            "-p",
            "work_mem=8MB",
            "--pg",
            "a.b=1",
            "-q",
            "--force",
        ])
        .unwrap();
        match c.command {
            CtlCommand::EditConfig { set, pg, quiet, force, apply, replace, .. } => {
                assert_eq!(set, ["loop_wait=3", "ttl=20"]);
                assert_eq!(pg, ["work_mem=8MB", "a.b=1"]);
                assert!(quiet && force && apply.is_none() && replace.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(&["edit-config", "--apply", "-"]).unwrap().command, CtlCommand::EditConfig { apply: Some(a), .. } if a == "-")
        );
        assert!(matches!(
            parse(&["history", "-f", "tsv"]).unwrap().command,
            CtlCommand::History { format: Format::Tsv, .. }
        ));
        assert!(matches!(parse(&["pause", "--wait"]).unwrap().command, CtlCommand::Pause { wait: true, .. }));
        assert!(matches!(
            parse(&["resume", "superman"]).unwrap().command,
            CtlCommand::Resume { cluster: ClusterArg { cluster_name: Some(_) }, wait: false }
        ));
        assert!(matches!(parse(&["topology", "-w", "2"]).unwrap().command, CtlCommand::Topology { .. }));
        assert!(matches!(parse(&["show-config"]).unwrap().command, CtlCommand::ShowConfig { .. }));
        assert!(matches!(parse(&["version"]).unwrap().command, CtlCommand::Version { cluster_name: None, .. }));
        let c = parse(&["flush", "superman", "n1", "n2", "restart"]).unwrap();
        assert!(matches!(c.command, CtlCommand::Flush { rest, .. } if rest == ["n1", "n2", "restart"]));
        assert!(parse(&["-c", "/home/postgres/postgres.yml", "list"]).unwrap().config_file.is_some());
        assert!(parse(&["--dcs", "etcd3://h:2379", "list"]).unwrap().dcs_url.is_some());
        assert!(parse(&["list", "--group", "1"]).is_err(), "Citus groups do not exist here");
    }
}
