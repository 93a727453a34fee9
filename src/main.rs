//! The `flotilla` binary: parses the command line and runs the command
//! from the `flotilla` library.

use clap::{Parser, Subcommand};
use flotilla::{
    bench_api, bench_failover, bench_schedule, bench_service, bench_startup, bench_store_degraded, bench_store_failover, client, cmd_agent,
    cmd_apply, cmd_certificate, cmd_change, cmd_chaos, cmd_get, cmd_kubeconfig, cmd_logs, cmd_rollout, cmd_secrets_encrypt, cmd_server,
    cmd_sim, cmd_store, cmd_token, cmd_up,
};

#[derive(Parser)]
#[command(name = "flotilla", version, about = "A container orchestrator: supervised actors, a Raft-replicated store, one small binary")]
struct Cli {
    /// API server URL for client commands (else $FLOTILLA_SERVER, else the kubeconfig's).
    #[arg(long, global = true)]
    server: Option<String>,
    /// Kubeconfig for client commands (else $KUBECONFIG, ~/.kube/config,
    /// then ./flotilla-data/admin.kubeconfig, which `flotilla up` writes).
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Bearer token for client commands (else $FLOTILLA_API_TOKEN, else the kubeconfig's).
    #[arg(long = "api-token", global = true, value_name = "TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct NamespaceArgs {
    /// Namespace (default: "default").
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// All in one process: a single-member server and one local node agent.
    Up(cmd_up::UpArgs),
    /// Run a node agent that reaches the servers over QUIC.
    Agent(cmd_agent::AgentArgs),
    /// Run a control-plane member: replicated store and HTTP API.
    Server(cmd_server::ServerArgs),
    /// The operator's low-level store tool (what etcdctl is to etcd).
    Store(cmd_store::StoreArgs),
    /// Issue a client certificate for a person and print its kubeconfig
    /// (run on a server member: it needs the cluster CA's key).
    Kubeconfig(cmd_kubeconfig::KubeconfigArgs),
    /// Revoke client certificates before they expire, and list them.
    #[command(subcommand)]
    Certificate(cmd_certificate::CertificateCommand),
    /// ServiceAccount tokens, and the cluster's agent token.
    #[command(subcommand)]
    Token(cmd_token::TokenCommand),
    /// The keys that encrypt Secrets at rest: status and rotation.
    #[command(subcommand)]
    SecretsEncrypt(cmd_secrets_encrypt::SecretsEncryptCommand),
    /// Create or update objects from YAML or JSON.
    Apply {
        /// File, directory or - for stdin (repeatable).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// List objects or show one.
    Get {
        kind: String,
        name: Option<String>,
        #[command(flatten)]
        ns: NamespaceArgs,
        /// Across all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum)]
        output: Option<cmd_get::Output>,
        /// Label selector (app=web,tier!=db).
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Keep watching for changes.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show an object in detail, with its recent events.
    Describe {
        kind: String,
        name: String,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Delete objects by kind and name, or those in a manifest.
    Delete {
        kind: Option<String>,
        names: Vec<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Set the replica count of a deployment or replicaset.
    Scale {
        kind: String,
        name: String,
        #[arg(long)]
        replicas: u32,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// Print a container's output.
    Logs {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Keep streaming new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        ns: NamespaceArgs,
    },
    /// CPU and memory usage of nodes or pods.
    Top { what: String },
    /// Break things on purpose: kill a node or a pod, partition a node, heal it.
    #[command(subcommand)]
    Chaos(cmd_chaos::ChaosCommand),
    /// Follow or undo a deployment's rollout.
    #[command(subcommand)]
    Rollout(cmd_rollout::RolloutCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the control plane in deterministic simulation from a seed, under
    /// faults, checking its invariants.
    Sim(cmd_sim::SimArgs),
    /// List events (newest last).
    Events {
        #[command(flatten)]
        ns: NamespaceArgs,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'w', long)]
        watch: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// API create/update latency against running servers.
    Api(bench_api::ApiBenchArgs),
    /// Pod startup latency (bound to Running) on one node and runtime.
    Startup(bench_startup::StartupBenchArgs),
    /// Pods per second through the API, scheduler, Raft and sim agents to Running.
    Schedule(bench_schedule::ScheduleBenchArgs),
    /// Time from killing a node agent until its replicas run elsewhere.
    Failover(bench_failover::FailoverBenchArgs),
    /// Write unavailability after the store's leader is killed (kill -9)
    /// or frozen (SIGSTOP), on three server processes it starts itself.
    StoreFailover(bench_store_failover::StoreFailoverArgs),
    /// Write latency and throughput, and linearizable reads, with one of
    /// three server processes killed against all three up.
    StoreDegraded(bench_store_degraded::StoreDegradedArgs),
    /// Requests through a Service's VIP against its backends directly, and
    /// the time from a pod turning Ready to its first proxied connection
    /// (against a running `flotilla up --runtime process --proxy nftables`).
    Service(bench_service::ServiceBenchArgs),
    /// A minimal HTTP server, the backend `bench service` runs as pods.
    #[command(hide = true)]
    HttpBackend(bench_service::HttpBackendArgs),
}

fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    // A simulation's story is its trace; the deciders' logs would drown it.
    let default =
        if quiet { "warn,flotilla_actors=error" } else { "warn,flotilla=info,flotilla_raft=info,flotilla_actors=info,hickory_server=warn" };
    let filter = EnvFilter::try_from_env("FLOTILLA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

async fn run(cli: Cli) -> Result<i32, String> {
    let target = client::ClientTarget { server: cli.server.clone(), kubeconfig: cli.kubeconfig.clone(), token: cli.api_token.clone() };
    let client = || client::ApiClient::new(&target);
    match cli.command {
        Command::Up(args) => cmd_up::run(args).await,
        Command::Agent(args) => cmd_agent::run(args).await,
        Command::Server(args) => cmd_server::run(args).await,
        Command::Logs { ref pod, ref container, follow, tail, ref ns } => {
            cmd_logs::logs(&client()?, pod, container.as_deref(), follow, tail, ns.namespace.as_deref()).await
        }
        Command::Top { ref what } => cmd_logs::top(&client()?, what).await,
        Command::Store(args) => cmd_store::run(args).await,
        Command::Kubeconfig(args) => cmd_kubeconfig::run(args),
        Command::Certificate(command) => cmd_certificate::run(&client()?, command).await,
        Command::Token(cmd_token::TokenCommand::Rotate(args)) => cmd_token::rotate(args).await,
        Command::Token(command) => cmd_token::run(&client()?, command).await,
        Command::SecretsEncrypt(command) => cmd_secrets_encrypt::run(&client()?, command).await,
        Command::Apply { ref files, ref ns } => cmd_apply::run(&client()?, files, ns.namespace.as_deref()).await,
        Command::Get { ref kind, ref name, ref ns, all_namespaces, output, ref selector, watch } => {
            let opts = cmd_get::GetOptions { namespace: ns.namespace.clone(), all_namespaces, output, selector: selector.clone(), watch };
            cmd_get::get(&client()?, kind, name.as_deref(), opts).await
        }
        Command::Describe { ref kind, ref name, ref ns } => cmd_get::describe(&client()?, kind, name, ns.namespace.clone()).await,
        Command::Delete { ref kind, ref names, ref files, ref ns } => {
            cmd_change::delete(&client()?, kind.as_deref(), names, files, ns.namespace.as_deref()).await
        }
        Command::Scale { ref kind, ref name, replicas, ref ns } => {
            cmd_change::scale(&client()?, kind, name, replicas, ns.namespace.as_deref()).await
        }
        Command::Bench(BenchCommand::Api(args)) => bench_api::run(args, &target).await,
        Command::Bench(BenchCommand::Startup(args)) => bench_startup::run(args).await,
        Command::Bench(BenchCommand::Schedule(args)) => bench_schedule::run(args).await,
        Command::Bench(BenchCommand::Failover(args)) => bench_failover::run(args).await,
        Command::Bench(BenchCommand::StoreFailover(args)) => bench_store_failover::run(args).await,
        Command::Bench(BenchCommand::StoreDegraded(args)) => bench_store_degraded::run(args).await,
        Command::Bench(BenchCommand::Service(args)) => bench_service::run(args, &target).await,
        Command::Bench(BenchCommand::HttpBackend(args)) => bench_service::http_backend(args).await,
        Command::Chaos(command) => cmd_chaos::run(&client()?, command).await,
        Command::Sim(args) => cmd_sim::run(args),
        Command::Rollout(command) => cmd_rollout::run(&client()?, command).await,
        Command::Events { ref ns, all_namespaces, watch } => cmd_get::events(&client()?, ns.namespace.clone(), all_namespaces, watch).await,
    }
}

fn main() {
    let cli = Cli::parse();
    flotilla::install_crypto_provider();
    init_logging(matches!(cli.command, Command::Sim(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}
