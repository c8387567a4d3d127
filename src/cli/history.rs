//! `status`, `asof` and `dead-letters`: reading what the pipeline stored.

//!
//! All of them only read: they never create the schema nor migrate, and
//! a schema without foodpipe's tables is one line and exit 2
//! ([`Access::ReadOnly`]).

use clap::{Args, Subcommand};
use store::{DeadLetterList, OrdersAsOf};

use super::BadInput;
use super::args::{Access, DbArgs, TopicGroupArgs, parse_datetime, parse_positive_u64};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    on: TopicGroupArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AsofArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The moment, RFC 3339, e.g. 2026-11-24T12:00:00Z.
    #[arg(value_parser = parse_datetime)]
    time: chrono::DateTime<chrono::Utc>,
    /// Only this order.
    #[arg(long)]
    order: Option<uuid::Uuid>,
    /// Only this customer's orders.
    #[arg(long)]
    customer: Option<String>,
    /// Compute this projection as of the time instead of the orders: its
    /// tables are made in a scratch schema, filled by its own apply.sql
    /// from the history up to the time, printed, and rolled back.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["order", "customer"])]
    projection: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// The newest dead letters, one line each.
    List(DeadLetterListArgs),
    /// One dead letter in full, with its key and raw value.
    Show(DeadLetterShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DeadLetterListArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    on: TopicGroupArgs,
    /// Only this kind, e.g. malformed_json, invalid_transition.
    #[arg(long)]
    kind: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50, value_parser = parse_positive_u64)]
    limit: u64,
}

#[derive(Debug, Args)]
pub(crate) struct DeadLetterShowArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The id from `dead-letters list`.
    #[arg(value_parser = parse_positive_u64)]
    id: u64,
}

/// `status`: offsets, events per partition, orders per status.
pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    let report = store.status(&args.on.group.name, &args.on.topic).await?;
    print!("{report}");
    Ok(())
}

/// `asof`: every order (or one, or a customer's) as of a time.
pub(crate) async fn asof(args: AsofArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    if let Some(name) = args.projection.as_deref().filter(|n| *n != "orders") {
        for table in store.projection_as_of(name, args.time).await? {
            if args.json {
                println!(
                    "{}",
                    events::json_for_terminal(&serde_json::to_string(&table)?)
                );
            } else {
                print!("{table}");
            }
        }
        return Ok(());
    }
    let orders = store
        .orders_as_of(args.time, args.order, args.customer.as_deref())
        .await?;
    if let Some(order) = args.order
        && orders.is_empty()
    {
        return Err(BadInput(format!(
            "order {order} did not exist as of {} (no event for it at or before that time)",
            args.time.to_rfc3339()
        ))
        .into());
    }
    if args.json {
        for o in &orders {
            println!("{}", events::json_for_terminal(&serde_json::to_string(o)?));
        }
    } else {
        print!(
            "{}",
            OrdersAsOf {
                time: args.time,
                orders
            }
        );
    }
    Ok(())
}

/// Runs a `dead-letters` subcommand.
pub(crate) async fn dead_letters(cmd: DeadLetterCommand) -> anyhow::Result<()> {
    match cmd {
        DeadLetterCommand::List(args) => dead_letters_list(args).await,
        DeadLetterCommand::Show(args) => dead_letters_show(args).await,
    }
}

async fn dead_letters_list(args: DeadLetterListArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    let rows = store
        .dead_letters(
            &args.on.group.name,
            &args.on.topic,
            args.kind.as_deref(),
            i64::try_from(args.limit).unwrap_or(i64::MAX),
        )
        .await?;
    let list = DeadLetterList {
        group: args.on.group.name,
        topic: args.on.topic,
        rows,
    };
    print!("{list}");
    Ok(())
}

async fn dead_letters_show(args: DeadLetterShowArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    let id = i64::try_from(args.id).unwrap_or(i64::MAX);
    let row = store.dead_letter(id).await?.ok_or_else(|| {
        BadInput(format!(
            "no dead letter with id {id}; `foodpipe dead-letters list` shows the ids"
        ))
    })?;
    print!("{row}");
    Ok(())
}
