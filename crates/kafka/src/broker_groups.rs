//! Consumer-group offsets on the broker, for the Kafka tools to see.
//!
//! foodpipe keeps its offsets in PostgreSQL, with the rows they produced
//! (invariant 3), and never reads these back. This module writes a copy to
//! the broker's group coordinator, as Flink's Kafka source and Materialize
//! do, so `kafka-consumer-groups --describe`, librdkafka's `committed()`,
//! Kafka UI and lag exporters show foodpipe's progress:
//!
//! - FindCoordinator (key type 0, the group) names the broker that keeps
//!   the group's offsets;
//! - OffsetCommit with generation -1 and an empty member id commits as a
//!   *standalone* group: no Kafka-protocol member, no rebalance;
//! - OffsetFetch reads them back (for `group describe`), ListGroups lists
//!   the groups the broker knows.
//!
//! rskafka models none of these APIs; the `kafka-protocol` crate encodes
//! and decodes them, and the patched rskafka's `raw_broker` sends them over
//! its own connections, so the bootstrap list, TLS and SASL settings and
//! the versions the broker announced in ApiVersions are the ones every
//! other request uses.
//!
//! # References
//!
//! - Kafka protocol guide: FindCoordinator (key 10), OffsetCommit (key 8),
//!   OffsetFetch (key 9), ListGroups (key 16).
//! - KIP-848 / `GroupCoordinator.handleCommitOffsets`: a commit with
//!   generation -1 and no member id is accepted while the group has no
//!   members (Apache Kafka); such offsets expire
//!   `offsets.retention.minutes` after their last commit.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, TopicName, offset_commit_request::OffsetCommitRequestPartition,
    offset_commit_request::OffsetCommitRequestTopic, offset_fetch_request::OffsetFetchRequestTopic,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use rskafka::client::Client;
use rskafka::client::error::ProtocolError;
use rskafka::client::raw::RawBroker;
use tokio::sync::Mutex;

use crate::{Error, Result};

/// A group the broker knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    pub group_id: String,
    /// `consumer` for Kafka consumer groups; empty for standalone groups
    /// such as foodpipe's mirror.
    pub protocol_type: String,
}

/// The broker's side of consumer groups, through one cluster client.
#[derive(Debug)]
pub struct BrokerGroups {
    client: Arc<Client>,
    /// Each group's coordinator connection, once found. Dropped on any
    /// failure, so the next call asks FindCoordinator again.
    coordinators: Mutex<HashMap<String, Arc<RawBroker>>>,
}

impl BrokerGroups {
    pub fn new(client: Arc<Client>) -> Self {
        Self {
            client,
            coordinators: Mutex::default(),
        }
    }

    /// Commits `offsets` (partition, next offset) of `topic` for `group` as
    /// a standalone group (generation -1, empty member id): for monitoring
    /// tools only. Fails if any partition's commit failed.
    pub async fn commit(&self, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<()> {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_retention_time_ms(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|&(partition, offset)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(partition)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(-1)
                                    .with_committed_metadata(Some(StrBytes::from_static_str(
                                        "foodpipe: mirror of PostgreSQL consumer_offsets",
                                    )))
                            })
                            .collect(),
                    ),
            ]);
        let response: OffsetCommitResponse = self
            .with_coordinator(group, "OffsetCommit", 2..=9, &request)
            .await?;
        let failed: Vec<String> = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.error_code != 0)
            .map(|p| {
                format!(
                    "partition {}: {}",
                    p.partition_index,
                    code_name(p.error_code)
                )
            })
            .collect();
        match response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.error_code != 0)
        {
            None => Ok(()),
            Some(first) => {
                self.forget(group).await;
                Err(group_error(
                    "OffsetCommit",
                    group,
                    failed.join(", "),
                    ProtocolError::new(first.error_code),
                ))
            }
        }
    }

    /// The offsets the broker has committed for `group` on these topics'
    /// partitions: (topic, partition) → next offset. With no topics, asks
    /// for all of the group's (`topics: null`), which Kafka answers but
    /// Tansu 0.6.0 answers with none.
    pub async fn committed(
        &self,
        group: &str,
        topics: &[(String, Vec<i32>)],
    ) -> Result<BTreeMap<(String, i32), i64>> {
        // Versions 2..=7 carry one group; version 8 on asks for several
        // groups at once.
        let wanted = (!topics.is_empty()).then(|| {
            topics
                .iter()
                .map(|(topic, partitions)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partition_indexes(partitions.clone())
                })
                .collect()
        });
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_topics(wanted);
        let response: OffsetFetchResponse = self
            .with_coordinator(group, "OffsetFetch", 2..=7, &request)
            .await?;
        if response.error_code != 0 {
            self.forget(group).await;
            return Err(group_error(
                "OffsetFetch",
                group,
                code_name(response.error_code),
                ProtocolError::new(response.error_code),
            ));
        }
        let mut offsets = BTreeMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                // -1: no offset committed for this partition.
                if p.error_code == 0 && p.committed_offset >= 0 {
                    offsets.insert(
                        (topic.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
        Ok(offsets)
    }

    /// The groups the broker knows (ListGroups on any broker; a cluster of
    /// one, like Tansu or a development Kafka, answers for all).
    pub async fn list_groups(&self) -> Result<Vec<ListedGroup>> {
        let broker = self
            .client
            .raw_broker(None)
            .await
            .map_err(|e| client_error("ListGroups", "*", e))?;
        let response: ListGroupsResponse = call(
            &broker,
            "ListGroups",
            "*",
            0..=4,
            &ListGroupsRequest::default(),
        )
        .await?;
        if response.error_code != 0 {
            return Err(group_error(
                "ListGroups",
                "*",
                code_name(response.error_code),
                ProtocolError::new(response.error_code),
            ));
        }
        let mut groups: Vec<ListedGroup> = response
            .groups
            .into_iter()
            .map(|g| ListedGroup {
                group_id: g.group_id.0.to_string(),
                protocol_type: g.protocol_type.to_string(),
            })
            .collect();
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(groups)
    }

    /// Sends `request` to the coordinator of `group`, finding it first if
    /// needed; a failure forgets the coordinator.
    async fn with_coordinator<Req>(
        &self,
        group: &str,
        operation: &'static str,
        versions: RangeInclusive<i16>,
        request: &Req,
    ) -> Result<Req::Response>
    where
        Req: Request,
    {
        let coordinator = self.coordinator(group).await?;
        let answer = call(&coordinator, operation, group, versions, request).await;
        if answer.is_err() {
            self.forget(group).await;
        }
        answer
    }

    async fn forget(&self, group: &str) {
        self.coordinators.lock().await.remove(group);
    }

    /// The connection to `group`'s coordinator (FindCoordinator, once).
    async fn coordinator(&self, group: &str) -> Result<Arc<RawBroker>> {
        if let Some(c) = self.coordinators.lock().await.get(group) {
            return Ok(Arc::clone(c));
        }
        let any = self
            .client
            .raw_broker(None)
            .await
            .map_err(|e| client_error("FindCoordinator", group, e))?;
        // Version 4 on asks for several keys at once; before, for one.
        let request = |version: i16| {
            let key = StrBytes::from_string(group.to_owned());
            let request = FindCoordinatorRequest::default().with_key_type(0);
            if version >= 4 {
                request.with_coordinator_keys(vec![key])
            } else {
                request.with_key(key)
            }
        };
        let (version, response): (i16, FindCoordinatorResponse) =
            call_versioned::<FindCoordinatorRequest, _>(
                &any,
                "FindCoordinator",
                group,
                0..=4,
                request,
            )
            .await?;
        // Version 4 on answers per key; before, in the top-level fields.
        let (error_code, node_id) = if version >= 4 {
            match response.coordinators.first() {
                Some(c) => (c.error_code, c.node_id.0),
                None => {
                    return Err(group_error(
                        "FindCoordinator",
                        group,
                        "the answer names no coordinator".to_owned(),
                        None,
                    ));
                }
            }
        } else {
            (response.error_code, response.node_id.0)
        };
        if error_code != 0 {
            return Err(group_error(
                "FindCoordinator",
                group,
                code_name(error_code),
                ProtocolError::new(error_code),
            ));
        }
        let coordinator = Arc::new(
            self.client
                .raw_broker(Some(node_id))
                .await
                .map_err(|e| client_error("FindCoordinator", group, e))?,
        );
        self.coordinators
            .lock()
            .await
            .insert(group.to_owned(), Arc::clone(&coordinator));
        Ok(coordinator)
    }
}

/// One request at the highest version of `versions` the broker supports.
pub(crate) async fn call<Req: Request>(
    broker: &RawBroker,
    operation: &'static str,
    group: &str,
    versions: RangeInclusive<i16>,
    request: &Req,
) -> Result<Req::Response> {
    call_versioned::<Req, &Req>(broker, operation, group, versions, |_| request)
        .await
        .map(|(_, response)| response)
}

/// Like [`call`], with the request built for the version chosen (some
/// fields exist only in some versions, and encoding refuses the others).
async fn call_versioned<Req: Request, R: std::borrow::Borrow<Req>>(
    broker: &RawBroker,
    operation: &'static str,
    group: &str,
    versions: RangeInclusive<i16>,
    build: impl FnOnce(i16) -> R,
) -> Result<(i16, Req::Response)> {
    // Settle the version first, so encoding cannot fail inside the send.
    let theirs = broker.api_versions(Req::KEY).ok_or_else(|| {
        group_error(
            operation,
            group,
            "the broker does not support this API".to_owned(),
            None,
        )
    })?;
    let ours = versions.start().max(&Req::VERSIONS.min).to_owned()
        ..=versions.end().min(&Req::VERSIONS.max).to_owned();
    let version = (*ours.start()..=*ours.end())
        .rev()
        .find(|v| theirs.contains(v))
        .ok_or_else(|| {
            group_error(
                operation,
                group,
                format!("no version in common: broker {theirs:?}, foodpipe {ours:?}"),
                None,
            )
        })?;
    let mut body = BytesMut::new();
    build(version)
        .borrow()
        .encode(&mut body, version)
        .map_err(|e| group_error(operation, group, format!("cannot encode: {e}"), None))?;
    let first_flexible = (Req::VERSIONS.min..=Req::VERSIONS.max)
        .find(|v| Req::header_version(*v) >= 2)
        .unwrap_or(i16::MAX);
    let (used, answer) = broker
        .request(Req::KEY, version..=version, first_flexible, |_| {
            body.to_vec()
        })
        .await
        .map_err(|e| client_error(operation, group, e))?;
    let response = Req::Response::decode(&mut Bytes::from(answer), used).map_err(|e| {
        group_error(
            operation,
            group,
            format!("cannot decode the answer: {e}"),
            None,
        )
    })?;
    Ok((used, response))
}

/// What a request was about, for its error: `group "g"`, or the text of
/// another subject given as `=topic "t"` (see `topic_configs`).
fn subject(group: &str) -> String {
    match group.strip_prefix('=') {
        Some(other) => other.to_owned(),
        None => format!("group {group:?}"),
    }
}

pub(crate) fn code_name(code: i16) -> String {
    match ProtocolError::new(code) {
        Some(ProtocolError::Unknown(_)) | None => format!("error code {code}"),
        Some(e) => format!("{e:?} ({code})"),
    }
}

pub(crate) fn group_error(
    operation: &'static str,
    group: &str,
    cause: String,
    code: Option<ProtocolError>,
) -> Error {
    Error::BrokerGroup {
        operation,
        group: subject(group),
        cause,
        code,
        client: None,
    }
}

fn client_error(operation: &'static str, group: &str, e: rskafka::client::error::Error) -> Error {
    Error::BrokerGroup {
        operation,
        group: subject(group),
        cause: e.to_string(),
        code: None,
        client: Some(Arc::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error codes are named as the protocol guide names them.
    #[test]
    fn codes_are_named() {
        assert_eq!(code_name(16), "NotCoordinator (16)");
        assert_eq!(code_name(-1), "UnknownServerError (-1)");
        assert_eq!(code_name(9999), "error code 9999");
    }
}
