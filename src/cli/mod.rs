//! The `foodpipe` command line: one module per command group, each owning
//! its flags and its handler. A handler turns flags into a library config,
//! calls the library and prints what it returns; the formatting itself is
//! the libraries' `Display` and serde implementations.
//!
//! - [`args`] holds the flags many commands share (Kafka, PostgreSQL,
//!   the group) and `open_store`, the one way commands reach PostgreSQL;
//!   [`security`] the TLS and SASL flags.
//! - [`produce`] runs `produce`, `send` and `generate`.
//! - [`consume`] runs `consume`, `replay` and `rebuild`.
//! - [`migrate`] runs `migrate`.
//! - [`history`] runs `status`, `asof` and `dead-letters` (read-only).
//! - [`groups`] runs `group list | describe | reset`.
//! - [`topics`] runs `topics`, `tail`, `cluster` and `doctor`.
//! - [`partition`] runs `partition`.
//! - [`watch`] runs `watch`.

use clap::{Parser, Subcommand};

mod args;
mod consume;
mod groups;
mod history;
mod migrate;
mod partition;
mod produce;
mod projection;
mod security;
mod topics;
mod watch;

use args::ClusterArgs;
use consume::{ConsumeArgs, RebuildArgs, ReplayArgs};
use groups::GroupCommand;
use history::{AsofArgs, DeadLetterCommand, StatusArgs};
use migrate::MigrateArgs;
use partition::PartitionArgs;
use produce::{GenerateArgs, ProduceArgs, SendArgs};
use topics::{DoctorArgs, TailArgs, TopicsCommand};
use watch::WatchArgs;

/// What `--version` prints: version, git commit, target, whether the C
/// runtime is linked in (static: the binary needs no libc on the host), and
/// the optional features compiled in (see build.rs).
macro_rules! version_with_linkage {
    ($linkage:literal) => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("FOODPIPE_GIT_COMMIT"),
            "; ",
            env!("FOODPIPE_BUILD_TARGET"),
            ", ",
            $linkage,
            "; features: ",
            env!("FOODPIPE_FEATURES"),
            ")"
        )
    };
}

#[cfg(target_feature = "crt-static")]
const VERSION: &str = version_with_linkage!("static");

#[cfg(not(target_feature = "crt-static"))]
const VERSION: &str = version_with_linkage!("dynamic");

/// A pure-Rust Kafka → PostgreSQL event-sourcing pipeline for food orders.
///
/// Order lifecycle events are produced to a Kafka topic keyed by customer;
/// `consume` folds them into PostgreSQL (event history + current state of
/// every order), storing each partition's offset in the same transaction.
#[derive(Debug, Parser)]
#[command(name = "foodpipe", version = VERSION, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate realistic order events and produce them to the topic.
    Produce(ProduceArgs),
    /// Produce `KEY<TAB>VALUE` (or `VALUE`) lines from stdin, like kafka-console-producer.
    Send(SendArgs),
    /// Print generated events as `KEY<TAB>JSON` lines, without producing them.
    Generate(GenerateArgs),
    /// Fold the topic into PostgreSQL from the stored offsets.
    Consume(ConsumeArgs),
    /// Create or update the schema and foodpipe's tables, saying which
    /// migrations were applied.
    ///
    /// Idempotent: run again, it applies nothing and says so. `consume`,
    /// `replay`, `rebuild` and `group reset` migrate by themselves; the
    /// read-only commands (status, asof, dead-letters, group list, group
    /// describe) never do, and fail until the schema is migrated.
    Migrate(MigrateArgs),
    /// Show stored offsets, events per partition and orders per status.
    Status(StatusArgs),
    /// Print the partition Kafka's default partitioner picks for each key.
    Partition(PartitionArgs),
    /// Read the records that could not be applied.
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Consumer groups: list them, describe one, reset its offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Rebuild the database from Kafka: replay the topic into shadow tables
    /// while live consumers run, catch up to their position, compare, and
    /// swap the rebuilt tables in atomically (or only compare: --dry-run).
    Rebuild(RebuildArgs),
    /// Fold the topic from its first record into a schema of its own,
    /// optionally only up to a time, for side-by-side comparison.
    #[command(mut_arg("schema", |a| a.help(
        "The live schema (default: public), which replay never writes to: \
         --to-schema must name another"
    )))]
    Replay(ReplayArgs),
    /// The state of orders (or of any projection, --projection) as of a
    /// time, computed from the event history.
    Asof(AsofArgs),
    /// Projections, the views folded from the stream: list, add, drop.
    #[command(subcommand)]
    Projection(projection::ProjectionCommand),
    /// The brokers the bootstrap servers advertise, the controller, and
    /// which bootstrap entries answered.
    Cluster(ClusterArgs),
    /// Check each bootstrap entry, each advertised broker address,
    /// PostgreSQL, the migrations, whether history's indexes fit in
    /// PostgreSQL's shared_buffers, and the topic; one line each, with the fix.
    Doctor(DoctorArgs),
    /// Topics, like kafka-topics: list, describe, create, delete.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Print records (partition, offset, timestamp, key, value), like
    /// kafka-console-consumer. Starts at the log end unless told otherwise.
    Tail(TailArgs),
    /// The live picture, full screen: per partition the log start and end,
    /// stored offset, lag, owner, epoch, events/s and state; the members;
    /// totals; a key explorer (`/`). Refreshes every second; q quits.
    /// Read-only. `--once` prints one frame as text.
    Watch(WatchArgs),
}

/// A user asked for something that does not exist: exit status 2.
#[derive(Debug)]
pub(crate) struct BadInput(pub(crate) String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Standard output for the commands that print records (`tail`,
/// `generate`), buffered. When its reader goes away (`| head -1`) the
/// write fails with [`ReaderGone`] inside the `BrokenPipe` error, which
/// `main` ends quietly on, as any Unix tool would; a broken pipe anywhere
/// else (a socket) stays an error.
pub(crate) struct Stdout(std::io::BufWriter<std::io::Stdout>);

impl Stdout {
    pub(crate) fn new() -> Self {
        Self(std::io::BufWriter::new(std::io::stdout()))
    }
}

/// The reader of standard output went away.
#[derive(Debug)]
pub(crate) struct ReaderGone;

impl std::fmt::Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of standard output went away")
    }
}

impl std::error::Error for ReaderGone {}

fn reader_gone(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, ReaderGone)
    } else {
        e
    }
}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(reader_gone)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(reader_gone)
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled, so a signal
/// that arrives early is not fatal: it is seen as soon as it is awaited.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (mut int, mut term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = int => {},
                () = term => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested: finishing the batch in hand");
    }
}

/// Runs the command `cli` names.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Produce(args) => produce::produce(args).await,
        Command::Send(args) => produce::send(args).await,
        Command::Generate(args) => produce::generate(args),
        Command::Consume(args) => consume::consume(args).await,
        Command::Migrate(args) => migrate::migrate(args).await,
        Command::Replay(args) => consume::replay(args).await,
        Command::Rebuild(args) => consume::rebuild(args).await,
        Command::Status(args) => history::status(args).await,
        Command::Asof(args) => history::asof(args).await,
        Command::Projection(cmd) => projection::projection(cmd).await,
        Command::DeadLetters(cmd) => history::dead_letters(cmd).await,
        Command::Group(cmd) => groups::group(cmd).await,
        Command::Topics(cmd) => topics::topics(cmd).await,
        Command::Tail(args) => topics::tail(args).await,
        Command::Cluster(args) => topics::cluster(args).await,
        Command::Doctor(args) => topics::doctor(args).await,
        Command::Partition(args) => partition::partition(args),
        Command::Watch(args) => watch::watch(args).await,
    }
}
