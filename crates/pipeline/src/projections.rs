//! Projections at start: every definition checked before anything is
//! applied, then each one not yet attached added (filled from history and
//! attached) while the group's other members keep consuming.

use store::{Definition, Ensured, Store, StoreConfig};

/// Checks every definition (a broken one is refused before any is added),
/// then makes sure each is attached. A projection another process is
/// adding is left to it: batches apply it once it is attached.
pub async fn prepare(
    store: &StoreConfig,
    definitions: &[Definition],
    group: &str,
) -> store::Result<()> {
    if definitions.is_empty() {
        return Ok(());
    }
    // No statement timeout: the fill's last stretch is one statement over
    // what history gained since the fill began.
    let store = Store::connect(&StoreConfig {
        pool_size: 2,
        statement_timeout: None,
        ..store.clone()
    })
    .await?;
    for def in definitions {
        store.check_projection(def).await?;
    }
    for def in definitions {
        let ensured = match store.ensure_projection(def, group).await {
            // A member starts while a rebuild runs: it consumes, and says
            // loudly which projection it did not add.
            Err(e @ store::Error::ProjectionWaitsForRebuild { .. }) => {
                tracing::warn!("{e}");
                continue;
            }
            other => other?,
        };
        match ensured {
            Ensured::Attached => {}
            Ensured::Added { events } => tracing::info!(
                projection = %def.name,
                events,
                "added projection {}: filled from {events} events of history and attached",
                def.name
            ),
            Ensured::AddedElsewhere => tracing::info!(
                projection = %def.name,
                "projection {} is being added by another process; batches apply it once it is attached",
                def.name
            ),
        }
    }
    Ok(())
}
