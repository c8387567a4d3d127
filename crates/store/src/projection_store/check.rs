//! [`Store::check_projection`]: a definition tried in a scratch schema, changing nothing.

use super::{enter_scratch, file_of, invalid, relations};
use crate::projection::{Definition, check_name, split_statements};
use crate::{Error, Result, Store};

impl Store {
    /// Checks a definition without changing anything: its `schema.sql`
    /// runs in a scratch schema and each statement of its `apply.sql` runs
    /// there against an empty `applied_events`, then all is rolled back.
    /// A failure is [`Error::ProjectionInvalid`] naming the file.
    pub async fn check_projection(&self, def: &Definition) -> Result<()> {
        check_name(&def.name)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let scratch = enter_scratch(&tx, "check").await?;
        tx.batch_execute(&def.schema_sql)
            .await
            .map_err(|e| invalid(def, "schema.sql", &def.schema_sql, &def.schema_sql, &e))?;
        let (_, others) = relations(&tx, &scratch).await?;
        if let Some(other) = others.first() {
            return Err(Error::ProjectionInvalid {
                name: def.name.clone(),
                file: file_of(def, "schema.sql"),
                message: format!(
                    "it creates {other}, which is not a table: a projection owns tables (and \
                     their indexes) only, which rebuild swaps; keep views and queries in \
                     files of their own"
                ),
            });
        }
        let statements = split_statements(&def.apply_sql);
        if statements.is_empty() {
            return Err(Error::ProjectionInvalid {
                name: def.name.clone(),
                file: file_of(def, "apply.sql"),
                message: "it holds no statement".to_owned(),
            });
        }
        for statement in &statements {
            tx.batch_execute(statement)
                .await
                .map_err(|e| invalid(def, "apply.sql", &def.apply_sql, statement, &e))?;
        }
        // Dropping `tx` rolls back: the scratch schema never existed.
        Ok(())
    }
}
