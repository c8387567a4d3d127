//! The migrations: [`Store::migrate`] under an advisory lock,
//! [`Store::check_migrated`] for read-only commands, [`Migrated`].

use crate::{Error, Result, Store};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Advisory lock key taken while migrating ("foodpipe" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x666f_6f64_7069_7065;

impl Store {
    /// Creates the configured schema if it is missing and applies the
    /// migrations in `migrations/` that are not applied yet; says which.
    pub async fn migrate(&self) -> Result<Migrated> {
        // refinery wants a plain client; a dedicated connection also keeps
        // the session-level advisory lock away from pooled connections.
        let (mut client, conn) = self.dedicated(&self.pg_config).await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = self.migrate_locked(&mut client).await;
        // Closing the connection releases the lock even if migrating failed.
        drop(client);
        let _ = conn.await;
        let migrated = result?;
        for m in &migrated.applied {
            tracing::info!(migration = %m, schema = %migrated.schema, "applied migration");
        }
        Ok(migrated)
    }

    /// The schema and the migrations, on a connection holding the
    /// migration lock.
    async fn migrate_locked(&self, client: &mut tokio_postgres::Client) -> Result<Migrated> {
        if let Some(schema) = &self.schema {
            // The session's search_path already names it: PostgreSQL uses
            // a schema in the path from the moment it exists.
            let created = client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await;
            match created {
                Ok(()) => {}
                // Processes of older versions create it outside the lock and
                // race on IF NOT EXISTS: the loser gets a unique violation
                // on the catalog; the schema exists.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                        || e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_SCHEMA) => {
                }
                Err(e) => return Err(e.into()),
            }
        }
        let runner = embedded::migrations::runner();
        let known = runner.get_migrations().len();
        let report = runner
            .run_async(client)
            .await
            .map_err(|e| Error::Migrate(e.to_string()))?;
        let schema: String = client
            .query_one("SELECT coalesce(current_schema(), 'public')", &[])
            .await?
            .get(0);
        Ok(Migrated {
            schema,
            applied: report
                .applied_migrations()
                .iter()
                .map(ToString::to_string)
                .collect(),
            known,
        })
    }

    /// Checks, changing nothing, that the schema holds foodpipe's tables
    /// with every migration this build knows: what read-only commands do
    /// instead of [`Store::migrate`], so a mistyped `--schema` or a
    /// database never migrated is said in one line rather than created
    /// empty and reported as zeros.
    pub async fn check_migrated(&self) -> Result<()> {
        let client = self.client().await?;
        // to_regclass needs no privilege on the table and resolves names
        // through the search_path exactly as the queries that follow will.
        let row = client
            .query_one(
                "SELECT current_schema(), current_user::text, \
                        to_regclass('order_events') IS NOT NULL \
                        AND to_regclass('refinery_schema_history') IS NOT NULL",
                &[],
            )
            .await?;
        let schema = self
            .schema
            .clone()
            .or_else(|| row.get(0))
            .unwrap_or_else(|| "public".to_owned());
        if !row.get::<_, bool>(2) {
            // A schema this role may not use is invisible to it: say so
            // rather than that it is empty.
            let usable: Option<bool> = client
                .query_opt(
                    "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace WHERE nspname = $1",
                    &[&schema],
                )
                .await?
                .map(|r| r.get(0));
            if usable == Some(false) {
                return Err(Error::SchemaNotUsable {
                    schema,
                    role: row.get(1),
                });
            }
            return Err(Error::NotMigrated { schema });
        }
        let applied: Vec<i64> = client
            .query("SELECT version::int8 FROM refinery_schema_history", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<String> = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .filter(|m| !applied.contains(&i64::from(m.version())))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::MigrationsMissing { schema, missing })
        }
    }

    /// How many of the migrations this build knows are applied.
    pub async fn migration_status(&self) -> Result<(usize, usize)> {
        let known = embedded::migrations::runner().get_migrations().len();
        let applied = match self
            .client()
            .await?
            .query_one("SELECT count(*) FROM refinery_schema_history", &[])
            .await
        {
            Ok(row) => row.get::<_, i64>(0) as usize,
            // No history table yet: nothing applied.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok((applied, known))
    }
}

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The schema migrated: the one configured, or the connection's default.
    pub schema: String,
    /// The migrations this call applied, in order, e.g. `V1__initial`.
    pub applied: Vec<String>,
    /// How many migrations this build knows.
    pub known: usize,
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.applied {
            writeln!(f, "applied {m} to schema {}", self.schema)?;
        }
        if self.applied.is_empty() {
            writeln!(
                f,
                "schema {} is up to date: all {} migrations were applied before; nothing to do",
                self.schema, self.known
            )
        } else {
            writeln!(
                f,
                "schema {} is up to date: {} migrations applied now, {} before",
                self.schema,
                self.applied.len(),
                self.known.saturating_sub(self.applied.len())
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `migrate` says each migration it applied, or that there was nothing to do.
    #[test]
    fn migrated_says_what_it_applied() {
        let now = Migrated {
            schema: "billing".to_owned(),
            applied: vec!["V5__x".to_owned(), "V6__y".to_owned()],
            known: 6,
        };
        assert_eq!(
            now.to_string(),
            "applied V5__x to schema billing\napplied V6__y to schema billing\n\
             schema billing is up to date: 2 migrations applied now, 4 before\n"
        );
        let before = Migrated {
            applied: vec![],
            ..now
        };
        assert_eq!(
            before.to_string(),
            "schema billing is up to date: all 6 migrations were applied before; nothing to do\n"
        );
    }
}
