//! `projection list|add|drop`: the registry of views folded from the stream.

use clap::{Args, Subcommand};

use super::BadInput;
use super::args::{Access, DbArgs, GroupArg, ProjectionsArg, TopicGroupArgs};

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionCommand {
    /// Each projection: its kind, state, tables, rows, and the offset
    /// vector every attached projection is at (they commit together).
    List(ListArgs),
    /// Add a projection from a --projections directory to a running
    /// system: its tables are made and filled from history while the
    /// members keep consuming, then it is attached under the group's
    /// attach lock. `consume` does the same for a new folder at start.
    Add(AddArgs),
    /// Drop a projection's tables and registry row (needs --execute).
    Drop(DropArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    on: TopicGroupArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    group: GroupArg,
    #[command(flatten)]
    projections: ProjectionsArg,
    /// The projection: a folder of the --projections directory, or a
    /// built-in one.
    #[arg(value_name = "NAME")]
    projection: String,
}

#[derive(Debug, Args)]
pub(crate) struct DropArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The projection to drop.
    #[arg(value_name = "NAME")]
    projection: String,
    /// Drop it; without this, only say what would be dropped.
    #[arg(long)]
    execute: bool,
}

pub(crate) async fn projection(cmd: ProjectionCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectionCommand::List(args) => list(args).await,
        ProjectionCommand::Add(args) => add(args).await,
        ProjectionCommand::Drop(args) => drop(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    let projections = store.projections().await?;
    let offsets = store.offsets(&args.on.group.name, &args.on.topic).await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "group": args.on.group.name,
                "topic": args.on.topic,
                "offsets": offsets.iter().map(|(p, o)| serde_json::json!({"partition": p, "next_offset": o})).collect::<Vec<_>>(),
                "projections": projections,
            })
        );
        return Ok(());
    }
    let vector: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    println!(
        "group {} on {}: attached projections are at offsets [{}] (partition:next offset)",
        args.on.group.name,
        args.on.topic,
        vector.join(" ")
    );
    println!(
        "{:<20} {:<8} {:<9} {:>10}  tables",
        "projection", "kind", "state", "rows"
    );
    for p in projections {
        println!(
            "{:<20} {:<8} {:<9} {:>10}  {}",
            p.name,
            p.kind,
            p.state,
            p.rows,
            p.tables.join(", ")
        );
    }
    Ok(())
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let definitions = args.projections.definitions()?;
    let Some(def) = definitions.into_iter().find(|d| d.name == args.projection) else {
        return Err(BadInput(format!(
            "no projection {} among the built-in ones{}; give the directory holding its folder \
             with --projections DIR (env FOODPIPE_PROJECTIONS)",
            args.projection,
            args.projections
                .dir
                .as_ref()
                .map(|d| format!(" and the folders of {}", d.display()))
                .unwrap_or_default()
        ))
        .into());
    };
    let store = args.db.open_store(Access::ReadWrite).await?;
    store.check_projection(&def).await?;
    match store.ensure_projection(&def, &args.group.name).await? {
        store::Ensured::Attached => println!("projection {} is attached", def.name),
        store::Ensured::Added { events } => println!(
            "projection {} is attached: filled from {events} events of history",
            def.name
        ),
        store::Ensured::AddedElsewhere => anyhow::bail!(
            "projection {} is being added by another process right now; \
             `foodpipe projection list` shows when it is attached",
            def.name
        ),
    }
    Ok(())
}

async fn drop(args: DropArgs) -> anyhow::Result<()> {
    let store = args.db.open_store(Access::ReadOnly).await?;
    let Some(p) = store
        .projections()
        .await?
        .into_iter()
        .find(|p| p.name == args.projection)
    else {
        return Err(store::Error::ProjectionUnknown(args.projection).into());
    };
    if !args.execute {
        println!(
            "would drop projection {} ({}; {} rows in {}); run again with --execute to drop it",
            p.name,
            p.kind,
            p.rows,
            p.tables.join(", ")
        );
        return Ok(());
    }
    let tables = store.drop_projection(&args.projection).await?;
    println!(
        "dropped projection {}: tables {}",
        args.projection,
        tables.join(", ")
    );
    Ok(())
}
