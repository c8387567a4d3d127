//! The `foodpipe` command: parse flags, set up logging, start the runtime,
//! run the command (`cli`), and turn its error into one line and an exit
//! status.
//!
//! Every error reaches the user as one line on stderr (`error: ...`) and a
//! non-zero exit status: 2 for a wrong flag (clap's convention) or for
//! something that does not exist, 1 for everything else. No panic message
//! or backtrace is printed for a failure a user can cause.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::{BadInput, Cli, ReaderGone};

fn main() -> ExitCode {
    quiet_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // clap's first line says what is wrong; the rest is usage,
            // which `--help` gives in full. One line, exit status 2.
            let rendered = e.render().to_string();
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let first = lines.next().unwrap_or("error: invalid arguments");
            // Keep clap's list of allowed values, which is on its own line.
            let allowed = lines.find(|l| l.starts_with("[possible values"));
            match allowed {
                Some(values) => eprintln!("{first} {values} (see --help)"),
                None => eprintln!("{first} (see --help)"),
            }
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `foodpipe tail | head`: the reader has what it wanted.
        Err(e) if reader_gone(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            if is_bad_input(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether the command ended because standard output's reader went away.
fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<ReaderGone>())
    })
}

/// The error and its causes on one line, joined with ": ". A cause whose
/// text its parent already printed (thiserror's `{source}` in a message,
/// rskafka's errors that print their own source) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if message.contains(text.trim()) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(text.trim());
    }
    message
}

/// Errors that mean the user asked for something that does not exist
/// (exit status 2), rather than something that failed (1): an unknown
/// topic, a schema without foodpipe's tables, a feature not built in.
fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<BadInput>().is_some()
            || matches!(
                cause.downcast_ref::<kafka::Error>(),
                Some(kafka::Error::UnknownTopic { .. } | kafka::Error::TopicExists { .. })
            )
            || cause
                .downcast_ref::<store::Error>()
                .is_some_and(store_bad_input)
            || matches!(
                cause.downcast_ref::<pipeline::consume::Error>(),
                Some(pipeline::consume::Error::Store(e)) if store_bad_input(e)
            )
    })
}

/// The PostgreSQL side's errors that mean a wrong flag or definition.
fn store_bad_input(e: &store::Error) -> bool {
    matches!(
        e,
        store::Error::TlsNotBuiltIn
            | store::Error::BadSchema(_)
            | store::Error::NotMigrated { .. }
            | store::Error::MigrationsMissing { .. }
            | store::Error::SchemaNotUsable { .. }
            | store::Error::ProjectionInvalid { .. }
            | store::Error::ProjectionChanged { .. }
            | store::Error::ProjectionUnknown(_)
            | store::Error::ProjectionDir { .. }
    )
}

/// No backtrace reaches a user. Output to a reader that went away (as in
/// `foodpipe tail | head`) ends the process quietly, as it would for any
/// Unix tool; any other panic is a bug, reported on one line.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(0);
        }
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{place}: {message} (please report it)");
    }));
}

/// Logs go to stderr; `RUST_LOG` overrides the default of info for
/// foodpipe and errors only for libraries (none from rskafka).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // rskafka logs each request it gives up on at error level; foodpipe
        // reports the same failures itself, with what it does about them.
        EnvFilter::new("error,rskafka=off,foodpipe=info,pipeline=info,producers=info,ops=info,tui=info,kafka=info,store=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Causes are joined on one line, and a cause its parent already
    /// printed is not printed twice.
    #[test]
    fn one_line_skips_causes_already_printed() {
        let e = anyhow::anyhow!("invalid proof\nsecond line")
            .context("SASL handshake failed: invalid proof second line")
            .context("cannot reach any bootstrap server of [k:9092]");
        assert_eq!(
            one_line(&e),
            "cannot reach any bootstrap server of [k:9092]: SASL handshake failed: invalid proof second line"
        );
        let plain = anyhow::anyhow!("root cause").context("while doing x");
        assert_eq!(one_line(&plain), "while doing x: root cause");
    }

    /// clap checks the whole command tree (unique argument and group
    /// names, valid defaults) only when asked; a mistake there would
    /// otherwise surface as an internal error when a user runs the
    /// command.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
