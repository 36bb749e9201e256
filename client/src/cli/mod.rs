//! The `daskrs` command line.

mod certs;
mod demo;
mod run;
mod serve;
mod sql;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use daskrs_core::ByteSize;

#[derive(Parser, Debug)]
#[command(
    name = "daskrs",
    version,
    about = "A Dask-style compute cluster",
    propagate_version = true
)]
pub struct Cli {
    /// Log filter, e.g. `info` or `daskrs_scheduler=debug`.
    #[arg(long, global = true, env = "DASKRS_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a scheduler (gRPC on --port, HTTP on --http-port).
    Scheduler(SchedulerArgs),
    /// Run a worker that joins a scheduler.
    Worker(WorkerArgs),
    /// Run a scheduler and N workers in this process until Ctrl-C.
    Local(LocalArgs),
    /// Run a graph described in JSON and print its results.
    Submit(SubmitArgs),
    /// Show the cluster's workers and tasks.
    Info(Target),
    /// Retire workers: they hand off their results, then close.
    Retire(RetireArgs),
    /// Cancel a running graph.
    Cancel(CancelArgs),
    /// Run SQL on the cluster: several statements separated by `;`, the
    /// last of which may be a query; prints its answer.
    Sql(SqlArgs),
    /// Start a local cluster, make TPC-H sample data, run TPC-H queries on it.
    Demo(DemoArgs),
    /// Make a cluster's TLS certificates: an authority, and certificates
    /// it issues to the scheduler, the workers and a client (each a
    /// directory for --tls-dir). The operator makes its own on Kubernetes.
    Certs(CertsArgs),
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Where to write them: ca.crt and ca.key, and the directories
    /// scheduler/, worker/ and client/.
    #[arg(long)]
    pub out: PathBuf,
    /// The cluster's name, shown in the certificates.
    #[arg(long, default_value = "daskrs")]
    pub cluster: String,
    /// Further DNS names or IP addresses of the scheduler's certificate
    /// (every certificate names `daskrs`, which is what peers check).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = daskrs_core::certs::CERT_DAYS)]
    pub days: u32,
}

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The scheduler's gRPC address.
    #[arg(long, env = "DASKRS_SCHEDULER", default_value = "127.0.0.1:8786")]
    pub scheduler: String,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// The cluster token (see `daskrs_proto::auth`).
#[derive(Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// Read the cluster token from this file; default: $DASKRS_TOKEN, if set.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// TLS with the cluster's certificates, from this directory of ca.crt,
    /// tls.crt and tls.key (see `daskrs certs`); default: $DASKRS_TLS_DIR,
    /// if set, else plain text.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
}

impl TokenArgs {
    pub fn load(&self) -> Result<Option<daskrs_proto::auth::Token>, Failure> {
        daskrs_proto::auth::Token::load(self.token_file.as_deref())
            .map_err(|e| Failure::new(2, e.to_string()))
    }

    pub fn tls(&self) -> Result<Option<daskrs_proto::tls::Tls>, Failure> {
        daskrs_proto::tls::Tls::from_dir_or_env(self.tls_dir.as_deref())
            .map_err(|e| Failure::new(2, e.to_string()))
    }
}

impl Target {
    pub async fn connect(&self) -> Result<daskrs_client::Client, Failure> {
        let token = self.token.load()?;
        let tls = self.token.tls()?;
        Ok(
            daskrs_client::Client::connect_with(&self.scheduler, token.as_ref(), tls.as_ref())
                .await?,
        )
    }
}

/// How the cluster reaches S3. Credentials come from the AWS default chain:
/// environment, shared profile, web identity (IRSA), EKS Pod Identity or
/// container credentials, instance metadata.
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// AWS region; default: from the AWS configuration, else us-east-1.
    #[arg(long, env = "DASKRS_S3_REGION")]
    pub s3_region: Option<String>,
    /// An S3-compatible endpoint such as http://minio:9000 (path-style addressing).
    #[arg(long, env = "DASKRS_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Most concurrent S3 requests per bucket and process.
    #[arg(long, env = "DASKRS_S3_MAX_CONCURRENCY")]
    pub s3_max_concurrency: Option<usize>,
    /// The only local directories SQL may read and write (comma-separated
    /// absolute paths), or `none`; any local file when unset. Pods the
    /// operator makes get `none` unless their spec's env says otherwise.
    #[arg(long, env = "DASKRS_SQL_LOCAL_ROOTS", value_delimiter = ',', value_parser = local_root)]
    pub sql_local_roots: Option<Vec<String>>,
}

fn local_root(s: &str) -> Result<String, String> {
    daskrs_engine::LocalFiles::parse(Some(&[s.to_string()]))?;
    Ok(s.to_string())
}

impl S3Args {
    pub fn settings(&self) -> daskrs_engine::S3Settings {
        daskrs_engine::S3Settings {
            region: self.s3_region.clone(),
            endpoint: self.s3_endpoint.clone(),
            max_concurrency: self.s3_max_concurrency,
            local_roots: self.sql_local_roots.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    #[command(flatten)]
    pub target: Target,
    /// The SQL text, or - to read it from standard input.
    #[arg(allow_hyphen_values = true)]
    pub sql: Option<String>,
    /// Read the SQL from this file.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// table (default), csv or json; with --output also parquet
    /// (default: from the file's extension).
    #[arg(long)]
    pub format: Option<String>,
    /// Write the answer to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Show the distributed plan (stages, tasks, shuffles) instead of running it.
    #[arg(long)]
    pub explain: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// The token every client and worker must present; without one (no
    /// --token-file, no $DASKRS_TOKEN) anyone who reaches the ports may use
    /// the cluster, so a scheduler listening beyond loopback refuses to start
    /// unless --no-token says so.
    #[command(flatten)]
    pub token: TokenArgs,
    /// Run without a token on a non-loopback address (a network you trust).
    #[arg(long, env = "DASKRS_NO_TOKEN")]
    pub no_token: bool,
    /// Serve /metrics without the token, for Prometheus.
    #[arg(long, env = "DASKRS_OPEN_METRICS")]
    pub open_metrics: bool,
    #[arg(long, env = "DASKRS_HOST", default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, env = "DASKRS_PORT", default_value_t = 8786)]
    pub port: u16,
    #[arg(long, env = "DASKRS_HTTP_PORT", default_value_t = 8787)]
    pub http_port: u16,
    /// Seconds of silence after which a worker is removed.
    #[arg(long, env = "DASKRS_WORKER_TTL", default_value_t = 30.0)]
    pub worker_ttl: f64,
    /// Seconds between worker heartbeats.
    #[arg(long, env = "DASKRS_HEARTBEAT", default_value_t = 1.0)]
    pub heartbeat: f64,
    /// The most tasks the scheduler holds at once; a graph that would pass
    /// it is refused.
    #[arg(long, env = "DASKRS_MAX_TASKS", default_value_t = daskrs_scheduler::state::DEFAULT_MAX_TASKS)]
    pub max_tasks: usize,
    /// Once listening, write the ports this got (JSON) to this file: for
    /// whoever starts it with port 0.
    #[arg(long, env = "DASKRS_PORT_FILE")]
    pub port_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub s3: S3Args,
    #[arg(long, env = "DASKRS_WORKER_NAME", default_value = "")]
    pub name: String,
    #[arg(long, env = "DASKRS_NTHREADS")]
    pub nthreads: Option<u32>,
    /// e.g. 4GiB; default: the machine's memory.
    #[arg(long, env = "DASKRS_MEMORY_LIMIT")]
    pub memory_limit: Option<ByteSize>,
    #[arg(long, env = "DASKRS_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Peer data port; 0 picks a free one.
    #[arg(long, env = "DASKRS_PORT", default_value_t = 8788)]
    pub port: u16,
    /// HTTP port for /metrics and /health; 0 picks a free one.
    #[arg(long, env = "DASKRS_HTTP_PORT", default_value_t = 8789)]
    pub http_port: u16,
    /// Serve /metrics without the token, for Prometheus.
    #[arg(long, env = "DASKRS_OPEN_METRICS")]
    pub open_metrics: bool,
    /// Run without a token on a non-loopback address (a network you trust).
    #[arg(long, env = "DASKRS_NO_TOKEN")]
    pub no_token: bool,
    /// Address peers reach this worker at (e.g. the pod IP and port).
    #[arg(long, env = "DASKRS_CONTACT_ADDRESS")]
    pub contact_address: Option<String>,
    #[arg(long, env = "DASKRS_LOCAL_DIR")]
    pub local_dir: Option<PathBuf>,
    /// Seconds a shutting-down worker waits to hand off its results.
    #[arg(long, env = "DASKRS_SHUTDOWN_TIMEOUT", default_value_t = 25.0)]
    pub shutdown_timeout: f64,
    /// Also pause when the process's resident memory (not only the results
    /// it holds) passes 80% of the memory limit.
    #[arg(long, env = "DASKRS_PAUSE_ON_PROCESS_MEMORY", default_value_t = true, action = clap::ArgAction::Set)]
    pub pause_on_process_memory: bool,
    /// Run Python tasks with this interpreter, which must have the `daskrs`
    /// package; without it the worker runs no Python tasks.
    #[arg(long, env = "DASKRS_PYTHON")]
    pub python: Option<PathBuf>,
    /// Once listening, write the ports this got (JSON) to this file: for
    /// whoever starts it with port 0.
    #[arg(long, env = "DASKRS_PORT_FILE")]
    pub port_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(flatten)]
    pub s3: S3Args,
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    #[arg(long, default_value_t = 1)]
    pub threads_per_worker: u32,
    /// Per worker; default: the machine's memory divided among the workers.
    #[arg(long)]
    pub memory_limit: Option<ByteSize>,
    /// Listen here; beyond loopback the cluster makes a token (unless
    /// --token-file or $DASKRS_TOKEN gives one) and prints how to use it.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[arg(long, default_value_t = 8786)]
    pub port: u16,
    #[arg(long, default_value_t = 8787)]
    pub http_port: u16,
    #[arg(long)]
    pub local_dir: Option<PathBuf>,
    /// Once listening, write the ports this got (JSON) to this file: for
    /// whoever starts it with port 0.
    #[arg(long)]
    pub port_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub target: Target,
    /// The graph file (JSON; see `daskrs_core::json`), or - for standard input.
    pub graph: PathBuf,
    /// text, or json for programs.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
pub struct RetireArgs {
    #[command(flatten)]
    pub target: Target,
    /// Names or addresses of the workers to retire.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<String>,
    /// Let the scheduler pick this many.
    #[arg(long, default_value_t = 0)]
    pub count: u32,
    #[arg(long, default_value_t = 60)]
    pub timeout: u32,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub target: Target,
    pub graph_id: u64,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    #[arg(long, default_value_t = 1)]
    pub threads_per_worker: u32,
    /// TPC-H scale factor of the sample data (1 is about 6 million order lines).
    #[arg(long, default_value_t = 0.1)]
    pub scale: f64,
    /// TPC-H queries to run, by number.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3, 5, 6, 10, 12])]
    pub queries: Vec<usize>,
    /// Write the sample data here and keep it (default: a temporary directory).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

pub fn init_logging(args: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

pub async fn run(args: Cli) -> u8 {
    let result = match args.command {
        Command::Scheduler(a) => serve::scheduler(a).await,
        Command::Worker(a) => serve::worker(a).await,
        Command::Local(a) => serve::local(a).await,
        Command::Submit(a) => run::submit(a).await,
        Command::Info(t) => run::info(t).await,
        Command::Retire(a) => run::retire(a).await,
        Command::Cancel(a) => run::cancel(a).await,
        Command::Sql(a) => sql::sql(a).await,
        Command::Demo(a) => demo::demo(a).await,
        Command::Certs(a) => certs::certs(a),
    };
    match result {
        Ok(()) => 0,
        Err(Failure { message, code }) => {
            eprintln!("error: {message}");
            code
        }
    }
}

/// What a command failed with, and the exit code it means.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code,
        }
    }
}

impl From<daskrs_client::Error> for Failure {
    fn from(e: daskrs_client::Error) -> Failure {
        let code = e.exit_code() as u8;
        let mut message = e.to_string();
        if let daskrs_client::Error::Failed(f) = &e
            && !f.lost_outputs.is_empty()
        {
            message.push_str(&format!(
                " (outputs not computed: {})",
                f.lost_outputs.join(", ")
            ));
        }
        Failure { message, code }
    }
}

/// Total memory of this machine, from /proc/meminfo; 8 GiB when unknown.
pub fn system_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30)
}

/// Turns true on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}
