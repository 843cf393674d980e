//! `kiln-server`: run the update server, or drive a running one through its admin API.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kiln_server::client::AdminClient;
use kiln_server::model::Policy;
use kiln_server::serve::{self, ServeConfig};

#[derive(Parser)]
#[command(name = "kiln-server", about = "The Kiln update server (Omaha v3)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Remote {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8470/", env = "KILN_SERVER")]
    server: String,
    /// The admin API's bearer token.
    #[arg(long, env = "KILN_SERVER_TOKEN", hide_env_values = true)]
    token: String,
    /// Check an https:// server against the CA certificates in this PEM file (default: the
    /// built-in Mozilla roots).
    #[arg(long, env = "KILN_SERVER_CA")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeConfig),
    /// List apps with their channels, packages and fleet.
    Apps(Remote),
    /// Create (or rename) an app.
    CreateApp {
        #[command(flatten)]
        remote: Remote,
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Upload a signed payload and point a channel at it.
    Publish {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        channel: Option<String>,
        /// Machines download from this URL instead of from the server.
        #[arg(long)]
        url: Option<String>,
        /// Replace the version if it was published before with other bytes (machines that
        /// downloaded the old ones keep them).
        #[arg(long)]
        replace: bool,
        payload: PathBuf,
    },
    /// Point a channel at the version another channel offers.
    Promote {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Stop granting updates on a channel.
    Pause {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        channel: String,
    },
    /// Grant updates on a channel again (also lifts an automatic halt).
    Resume {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        channel: String,
    },
    /// Set a channel's rollout policy (fields left out take their defaults).
    Policy {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        channel: String,
        /// The policy as JSON, e.g. '{"percent":10,"safe_mode":true}'.
        policy: String,
    },
    /// List an app's machines.
    Instances {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        app: String,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Forget machines not seen for this many seconds.
    Expire {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        max_age_secs: u64,
    },
    /// etcd discovery tokens: the URL a new cluster's machines bootstrap etcd from
    /// (`etcd2: discovery: <url>` in their cloud-configs).
    Discovery {
        #[command(subcommand)]
        command: DiscoveryCommand,
    },
}

#[derive(Subcommand)]
enum DiscoveryCommand {
    /// Create a token for a cluster of SIZE members and print its URL (only the URL, so that
    /// `URL=$(kiln-server discovery new --size 3)` works).
    New {
        #[command(flatten)]
        remote: Remote,
        /// How many members the cluster starts with (1 to 99).
        #[arg(long)]
        size: u32,
    },
    /// List the tokens with their size and registrations.
    List(Remote),
    /// Delete a token, or with MEMBER_ID only that member's registration (a wiped machine's
    /// stale entry, which would make it fail as a duplicate when it registers again).
    Delete {
        #[command(flatten)]
        remote: Remote,
        /// The discovery token (the URL's last segment).
        #[arg(value_name = "TOKEN")]
        discovery_token: String,
        member_id: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli.command) {
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn client(remote: &Remote) -> Result<AdminClient> {
    Ok(AdminClient::with_ca_file(
        &remote.server,
        &remote.token,
        remote.ca_file.as_deref(),
    )?)
}

fn run(command: Command) -> Result<()> {
    let answer = match command {
        Command::Serve(cfg) => return serve::run(&cfg),
        Command::Apps(remote) => client(&remote)?.apps()?,
        Command::CreateApp { remote, id, name } => {
            client(&remote)?.create_app(&id, name.as_deref().unwrap_or(&id))?
        }
        Command::Publish {
            remote,
            app,
            channel,
            url,
            replace,
            payload,
        } => {
            client(&remote)?.publish(&app, channel.as_deref(), &payload, url.as_deref(), replace)?
        }
        Command::Promote {
            remote,
            app,
            from,
            to,
        } => client(&remote)?.promote(&app, &from, &to)?,
        Command::Pause {
            remote,
            app,
            channel,
        } => client(&remote)?.pause(&app, &channel)?,
        Command::Resume {
            remote,
            app,
            channel,
        } => client(&remote)?.resume(&app, &channel)?,
        Command::Policy {
            remote,
            app,
            channel,
            policy,
        } => {
            let policy: Policy = serde_json::from_str(&policy)
                .map_err(|e| anyhow::anyhow!("reading the policy JSON {policy:?}: {e}"))?;
            client(&remote)?.set_policy(&app, &channel, &policy)?
        }
        Command::Instances {
            remote,
            app,
            channel,
            status,
        } => client(&remote)?.instances(&app, channel.as_deref(), status.as_deref())?,
        Command::Expire {
            remote,
            max_age_secs,
        } => client(&remote)?.expire(max_age_secs)?,
        Command::Discovery { command } => match command {
            DiscoveryCommand::New { remote, size } => {
                let answer = client(&remote)?.discovery_new(size)?;
                let url = answer["url"].as_str().ok_or_else(|| {
                    anyhow::anyhow!("the server's answer has no discovery URL: {answer}")
                })?;
                println!("{url}");
                return Ok(());
            }
            DiscoveryCommand::List(remote) => client(&remote)?.discovery_list()?,
            DiscoveryCommand::Delete {
                remote,
                discovery_token,
                member_id,
            } => client(&remote)?.discovery_delete(&discovery_token, member_id.as_deref())?,
        },
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
