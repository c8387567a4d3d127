//! Requests rskafka does not model, encoded and decoded by the caller
//! (foodpipe patch).
//!
//! rskafka covers partition-level produce and fetch, metadata and topic
//! administration. A program that needs another API (group offsets,
//! ListGroups, ...) can encode it with a protocol crate and send it here,
//! over rskafka's own connection: same bootstrap list, TLS and SASL
//! settings, and the versions the broker announced in ApiVersions.

use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::{
    client::error::{Error, Result},
    connection::{BrokerCache, BrokerCacheGeneration, BrokerConnection, BrokerConnector},
    messenger::RequestError,
    protocol::{
        api_key::ApiKey,
        api_version::{ApiVersion, ApiVersionRange},
        primitives::Int16,
    },
};

/// A connection to one broker for raw requests.
#[derive(Debug)]
pub struct RawBroker {
    connection: BrokerConnection,
    /// Set for the client's cached arbitrary broker: a failed request
    /// invalidates the cache so the next `raw_broker(None)` reconnects.
    arbitrary: Option<(Arc<BrokerConnector>, BrokerCacheGeneration)>,
}

impl super::Client {
    /// A connection for raw requests: to `broker` (a node id, e.g. from a
    /// FindCoordinator answer) or, with `None`, to any broker of the
    /// cluster. A node id the client has not seen in metadata yet is
    /// looked up with a metadata request first.
    pub async fn raw_broker(&self, broker: Option<i32>) -> Result<RawBroker> {
        match broker {
            None => {
                let (connection, generation) = (&*self.brokers).get().await?;
                Ok(RawBroker {
                    connection,
                    arbitrary: Some((Arc::clone(&self.brokers), generation)),
                })
            }
            Some(id) => {
                if let Some(connection) = self.brokers.connect(id).await? {
                    return Ok(RawBroker {
                        connection,
                        arbitrary: None,
                    });
                }
                // Unknown node: refresh the topology, then try once more.
                self.list_topics().await?;
                match self.brokers.connect(id).await? {
                    Some(connection) => Ok(RawBroker {
                        connection,
                        arbitrary: None,
                    }),
                    None => Err(Error::InvalidResponse(format!(
                        "broker {id} is not in the cluster's metadata"
                    ))),
                }
            }
        }
    }
}

impl RawBroker {
    /// The versions of `api_key` this broker supports, if any.
    pub fn api_versions(&self, api_key: i16) -> Option<RangeInclusive<i16>> {
        self.connection
            .version_range(ApiKey::from(Int16(api_key)))
            .map(|r| r.min().0.0..=r.max().0.0)
    }

    /// Sends one request of `api_key` at the highest version in `versions`
    /// the broker supports. `first_flexible` is the API's first version
    /// with tagged fields (the header versions follow from it); `encode`
    /// writes the body at the chosen version. Returns that version and the
    /// response body (after the response header), undecoded.
    pub async fn request(
        &self,
        api_key: i16,
        versions: RangeInclusive<i16>,
        first_flexible: i16,
        encode: impl FnOnce(i16) -> Vec<u8> + Send,
    ) -> Result<(i16, Vec<u8>)> {
        let range = ApiVersionRange::new(
            ApiVersion(Int16(*versions.start())),
            ApiVersion(Int16(*versions.end())),
        );
        let result = self
            .connection
            .request_raw(
                ApiKey::from(Int16(api_key)),
                range,
                ApiVersion(Int16(first_flexible)),
                |v| encode(v.0.0),
            )
            .await;
        match result {
            Ok((version, body)) => Ok((version.0.0, body)),
            Err(e) => {
                if matches!(e, RequestError::Poisoned(_) | RequestError::IO(_))
                    && let Some((brokers, generation)) = &self.arbitrary
                {
                    (&**brokers)
                        .invalidate("raw request: connection broken", *generation)
                        .await;
                }
                Err(Error::Request(e))
            }
        }
    }
}
