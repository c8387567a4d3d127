//! `watch`: the live picture of a topic and a consumer group, full screen
//! (or one frame as text with `--once`). Read-only: its PostgreSQL sessions
//! refuse writes (`tui::open_store`).

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;

use super::args::{DbArgs, GroupArg, KafkaArgs, parse_duration};
use super::{BadInput, shutdown_signal};

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    /// Print one frame as plain text (two readings one --interval apart,
    /// so events/s are real) and exit, for scripts.
    #[arg(long)]
    once: bool,
    /// Open the key explorer with this key.
    #[arg(long)]
    key: Option<String>,
    /// Time between readings of the broker and PostgreSQL.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// A partition with lag whose stored offset has not moved for this
    /// long is shown as stalled.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stall_after: Duration,
    /// Members silent for longer than this are shown as gone (consume's
    /// --session-timeout).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    session_timeout: Duration,
    /// Columns of the --once frame (default: the terminal's width, or 100
    /// when stdout is not a terminal).
    #[arg(long, value_parser = clap::value_parser!(u16).range(40..=1000))]
    width: Option<u16>,
}

pub(crate) async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    if !args.once && !std::io::stdout().is_terminal() {
        return Err(BadInput(
            "watch draws on a terminal and stdout is not one; add --once to print one frame as text"
                .to_owned(),
        )
        .into());
    }
    let store = tui::open_store(&args.db.config()?).await?;
    let kafka = args.kafka.config()?;
    tui::check_topic(&kafka, &args.kafka.topic).await?;
    let config = tui::WatchConfig {
        topic: args.kafka.topic.clone(),
        group: args.group.name.clone(),
        refresh: args.interval,
        read_timeout: kafka.timeout,
        judgement: tui::Judgement {
            stall_after: args.stall_after,
            session_timeout: args.session_timeout,
        },
        color: tui::color_wanted(),
        key: args.key,
    };
    if args.once {
        let width = args
            .width
            .or_else(|| {
                std::io::stdout()
                    .is_terminal()
                    .then(tui::terminal_width)
                    .flatten()
            })
            .unwrap_or(100);
        print!("{}", tui::once(store, kafka, config, width).await?);
        return Ok(());
    }
    tui::run(store, kafka, config, shutdown_signal()).await
}
