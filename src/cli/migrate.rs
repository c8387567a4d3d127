//! `migrate`: the schema and foodpipe's tables, created or brought up to
//! date, for operators who migrate before deploying. `consume`, `replay`,
//! `rebuild` and `group reset` migrate by themselves; the read-only
//! commands never do.

use clap::Args;
use store::Store;

use super::args::DbArgs;

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
}

/// Applies what is missing and says which migrations it applied; run
/// twice, the second run applies nothing and says so.
pub(crate) async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let store = Store::connect(&args.db.config()?).await?;
    print!("{}", store.migrate().await?);
    Ok(())
}
