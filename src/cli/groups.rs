//! `group list | describe | reset`: the consumer-group tools. `list` and
//! `describe` only read ([`Access::ReadOnly`]); `reset` writes offsets.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::args::{
    Access, ClusterArgs, DbArgs, GroupArg, KafkaArgs, parse_datetime, parse_duration,
};
use super::shutdown_signal;

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// foodpipe's groups (generation, members, topics) and the groups the
    /// broker knows (ListGroups), foodpipe's marked.
    List(GroupListArgs),
    /// Per partition the stored offset (PostgreSQL), the broker's committed
    /// offset (the mirror the Kafka tools see), log-end offset, lag, owner
    /// and epoch; the members with their heartbeat, metrics address and
    /// state; stopped partitions. Every topic of the group unless --topic.
    Describe(GroupDescribeArgs),
    /// Move a group's offsets. Prints the plan (old -> new per partition)
    /// and changes nothing unless --execute; refuses while the group has
    /// live members.
    Reset(GroupResetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GroupListArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GroupDescribeArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Only this topic (default: every topic the group has offsets for,
    /// like kafka-consumer-groups --describe).
    #[arg(long, env = "FOODPIPE_TOPIC")]
    topic: Option<String>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    /// Refresh in place every second until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct ResetTarget {
    /// To the earliest offset still on the broker.
    #[arg(long)]
    to_earliest: bool,
    /// To the log end: skip everything produced so far.
    #[arg(long)]
    to_latest: bool,
    /// To this offset (clamped to what the broker has).
    #[arg(long, allow_negative_numbers = true)]
    to_offset: Option<i64>,
    /// To the first record at or after this time (RFC 3339, e.g.
    /// 2026-11-24T12:00:00Z), by the broker's offset-for-timestamp lookup.
    #[arg(long, value_parser = parse_datetime)]
    to_datetime: Option<chrono::DateTime<chrono::Utc>>,
    /// Move each offset by N (negative to go back).
    #[arg(long, allow_negative_numbers = true)]
    shift_by: Option<i64>,
}

#[derive(Debug, Args)]
pub(crate) struct GroupResetArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    #[command(flatten)]
    to: ResetTarget,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Apply the plan; without it nothing changes.
    #[arg(long)]
    execute: bool,
    /// Members silent for longer than this count as gone.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    session_timeout: Duration,
}

/// Runs a `group` subcommand.
pub(crate) async fn group(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List(args) => group_list(args).await,
        GroupCommand::Describe(args) => group_describe(args).await,
        GroupCommand::Reset(args) => group_reset(args).await,
    }
}

async fn group_list(args: GroupListArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    let list = ops::groups::list(&store, &args.cluster.config()?).await?;
    print!("{list}");
    Ok(())
}

async fn group_describe(args: GroupDescribeArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    let kafka = args.cluster.config()?;
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        let d =
            ops::groups::describe(&store, &kafka, &args.group.name, args.topic.as_deref()).await?;
        if args.watch {
            // Clear the screen and home the cursor, like `watch`.
            print!("\x1b[2J\x1b[H{}", chrono::Utc::now().format("%H:%M:%S\n"));
        }
        print!("{d}");
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn group_reset(args: GroupResetArgs) -> anyhow::Result<()> {
    use ops::groups::ResetTo;
    let store = args.db.open_store(Access::ReadWrite).await?;
    let t = &args.to;
    let to = if t.to_earliest {
        ResetTo::Earliest
    } else if t.to_latest {
        ResetTo::Latest
    } else if let Some(o) = t.to_offset {
        ResetTo::Offset(o)
    } else if let Some(d) = t.to_datetime {
        ResetTo::Datetime(d)
    } else if let Some(n) = t.shift_by {
        ResetTo::ShiftBy(n)
    } else {
        anyhow::bail!(
            "say where to: --to-earliest, --to-latest, --to-offset, --to-datetime or --shift-by"
        );
    };
    let request = ops::groups::ResetRequest {
        group: &args.group.name,
        topic: &args.kafka.topic,
        to,
        partition: args.partition,
        execute: args.execute,
        session_timeout: args.session_timeout,
    };
    let plan = ops::groups::reset(&store, &args.kafka.config()?, &request).await?;
    print!("{plan}");
    Ok(())
}
