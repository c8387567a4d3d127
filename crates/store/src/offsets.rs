//! Stored offsets: [`Store::stored_offset`], [`Store::init_offset`],
//! [`Store::reset_offset`] with its [`Gap`] row, [`StoredOffset`].

use crate::{Error, Result, Store};

impl Store {
    /// The stored next offset of each partition of `topic` for `group`.
    pub async fn offsets(&self, group: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(include_str!("sql/select_offsets.sql"))
            .await?;
        let rows = client.query(&stmt, &[&group, &topic]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The stored offset of a partition, if the group has one.
    pub async fn stored_offset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<StoredOffset>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(include_str!("sql/select_offset.sql"))
            .await?;
        let row = client
            .query_opt(&stmt, &[&group, &topic, &partition])
            .await?;
        Ok(row.map(|r| StoredOffset {
            next_offset: r.get(0),
            incarnation: r.get(1),
            last_fingerprint: r.get(2),
            fingerprint_offset: r.get(3),
        }))
    }

    /// The event id of the history row from `topic`/`partition` at
    /// (`incarnation`, `offset`), if that record was applied.
    pub async fn event_id_at(
        &self,
        topic: &str,
        partition: i32,
        incarnation: i32,
        offset: i64,
    ) -> Result<Option<uuid::Uuid>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT event_id FROM order_events WHERE kafka_topic = $1 \
                 AND kafka_partition = $2 AND kafka_incarnation = $3 AND kafka_offset = $4",
                &[&topic, &partition, &incarnation, &offset],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Stores `initial` as the partition's next offset unless one is stored
    /// already, and returns the stored one.
    pub async fn init_offset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        initial: i64,
    ) -> Result<StoredOffset> {
        insert_initial_offset(&self.client().await?, group, topic, partition, initial).await?;
        self.stored_offset(group, topic, partition)
            .await?
            .ok_or_else(|| Error::Migrate("consumer_offsets row vanished after insert".into()))
    }

    /// Records `gap` in `offset_gaps` and moves the stored offset to
    /// `gap.reset_to`, in one transaction; compare-and-set against
    /// `gap.stored`. Returns false (and changes nothing) if the stored
    /// offset was no longer `gap.stored`.
    pub async fn reset_offset(&self, gap: &Gap<'_>) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(include_str!("sql/reset_offset.sql"))
            .await?;
        let moved = tx
            .execute(
                &stmt,
                &[
                    &gap.group,
                    &gap.topic,
                    &gap.partition,
                    &gap.reset_to,
                    &gap.new_incarnation,
                    &gap.stored.next_offset,
                    &gap.stored.incarnation,
                ],
            )
            .await?;
        if moved != 1 {
            return Ok(false);
        }
        insert_gap(&tx, gap).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Stores `initial` as the partition's next offset unless one is stored
/// already: the one place an offset row is created for a group that has
/// never read the partition ([`Store::init_offset`], a lease's take).
pub(crate) async fn insert_initial_offset(
    client: &deadpool_postgres::Client,
    group: &str,
    topic: &str,
    partition: i32,
    initial: i64,
) -> Result<()> {
    let stmt = client
        .prepare_cached(include_str!("sql/init_offset.sql"))
        .await?;
    client
        .execute(&stmt, &[&group, &topic, &partition, &initial])
        .await?;
    Ok(())
}

/// Records `gap` in `offset_gaps`, inside the transaction that moved the
/// stored offset.
pub(crate) async fn insert_gap(
    tx: &impl deadpool_postgres::GenericClient,
    gap: &Gap<'_>,
) -> Result<()> {
    let stmt = tx
        .prepare_cached(include_str!("sql/insert_gap.sql"))
        .await?;
    tx.execute(
        &stmt,
        &[
            &gap.group,
            &gap.topic,
            &gap.partition,
            &gap.reason,
            &gap.stored.next_offset,
            &gap.earliest,
            &gap.latest,
            &gap.reset_to,
            &gap.policy,
            &gap.stored.incarnation,
            &gap.new_incarnation,
        ],
    )
    .await?;
    Ok(())
}

/// A partition's stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOffset {
    /// The next record to apply.
    pub next_offset: i64,
    /// Which log of the partition `next_offset` refers to; goes up when the
    /// topic is found recreated.
    pub incarnation: i32,
    /// [`fold::fingerprint`](crate::fold::fingerprint) of the last record applied, the one at
    /// [`StoredOffset::fingerprinted_offset`].
    pub last_fingerprint: Option<i64>,
    /// The offset of the record `last_fingerprint` describes. `None` for a
    /// fingerprint stored before migration V9, which described the record
    /// at `next_offset - 1`.
    pub fingerprint_offset: Option<i64>,
}

impl StoredOffset {
    /// The offset of the record the stored fingerprint describes, or of the
    /// record before the stored offset when there is no fingerprint (the
    /// take then compares event ids with history). A batch's next offset
    /// may lie past transaction markers, which are not records to compare.
    pub fn fingerprinted_offset(&self) -> i64 {
        match (self.last_fingerprint, self.fingerprint_offset) {
            (Some(_), Some(offset)) => offset,
            _ => self.next_offset - 1,
        }
    }
}

/// A stored offset that cannot be used as it is, and what replaces it.
#[derive(Debug, Clone)]
pub struct Gap<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// `retention`, `log_end`, `recreated` or `position_clash`.
    pub reason: &'static str,
    pub stored: StoredOffset,
    pub earliest: i64,
    pub latest: i64,
    pub reset_to: i64,
    pub new_incarnation: i32,
    pub policy: &'a str,
}
