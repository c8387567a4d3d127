//! What a bootstrap server says about the cluster, asked directly.
//!
//! rskafka hides the broker list behind its client, but the listener
//! gotcha (a broker reachable at its bootstrap address that advertises
//! another one) can only be explained by showing that list. So this module
//! speaks just enough of the protocol to ask one address for it: a
//! Metadata v1 request for no topics, whose response lists the brokers as
//! they advertise themselves and the controller.
//!
//! # References
//!
//! Kafka protocol guide: "Common Request and Response Structure" (request
//! header v1) and "Metadata API (Key: 3)", request and response v1.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker as the cluster advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

impl Broker {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One bootstrap server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub brokers: Vec<Broker>,
    /// The id of the controller broker, `-1` if the cluster has none.
    pub controller_id: i32,
}

/// The brokers one per line as `cluster` shows them, the controller marked.
impl std::fmt::Display for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "brokers, as they advertise themselves:")?;
        for b in &self.brokers {
            let role = if b.id == self.controller_id {
                "  (controller)"
            } else {
                ""
            };
            writeln!(f, "  id {:<4} {}{role}", b.id, b.address())?;
        }
        Ok(())
    }
}

const API_METADATA: i16 = 3;
const CORRELATION_ID: i32 = 0x0F00D;

/// Asks `address` (`host:port`) for the cluster's brokers, within `timeout`.
pub async fn describe_cluster(address: &str, timeout: Duration) -> Result<ClusterView, String> {
    tokio::time::timeout(timeout, ask(address))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn ask(address: &str) -> Result<ClusterView, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let client_id = b"foodpipe";
    let mut request = Vec::new();
    request.extend_from_slice(&API_METADATA.to_be_bytes());
    request.extend_from_slice(&1i16.to_be_bytes()); // version 1
    request.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    request.extend_from_slice(client_id);
    request.extend_from_slice(&0i32.to_be_bytes()); // no topics
    let mut framed = (request.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    stream.write_all(&framed).await.map_err(|e| e.to_string())?;
    let size = stream.read_i32().await.map_err(|e| e.to_string())?;
    if !(8..=16 * 1024 * 1024).contains(&size) {
        return Err(format!(
            "implausible response size {size}: is this a Kafka broker?"
        ));
    }
    let mut body = vec![0u8; size as usize];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    parse(&body)
}

/// Parses a Metadata v1 response body (after the size).
fn parse(body: &[u8]) -> Result<ClusterView, String> {
    let mut r = Reader { body, at: 0 };
    if r.i32()? != CORRELATION_ID {
        return Err("response to another request".to_owned());
    }
    let count = r.i32()?;
    // The count comes from the wire: a negative one is garbage, and a huge
    // one must not reserve memory the body could never fill. Each broker
    // takes at least MIN_BROKER_BYTES, so the body bounds the capacity.
    let count =
        usize::try_from(count).map_err(|_| format!("metadata response lists {count} brokers"))?;
    if count > r.remaining() / MIN_BROKER_BYTES {
        return Err(format!(
            "metadata response lists {count} brokers in {} bytes: truncated or not Kafka",
            r.remaining()
        ));
    }
    let mut brokers = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.i32()?;
        let host = r.string()?;
        let port = r.i32()?;
        let _rack = r.nullable_string()?;
        brokers.push(Broker { id, host, port });
    }
    let controller_id = r.i32()?;
    Ok(ClusterView {
        brokers,
        controller_id,
    })
}

/// The smallest broker entry of a Metadata v1 response: node id, an empty
/// host, port and a null rack.
const MIN_BROKER_BYTES: usize = 4 + 2 + 4 + 2;

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.body.len() - self.at
    }
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.body.len());
        let end = end.ok_or_else(|| "truncated metadata response".to_owned())?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, String> {
        self.nullable_string()?
            .ok_or_else(|| "null where a string was expected".to_owned())
    }
    fn nullable_string(&mut self) -> Result<Option<String>, String> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let bytes = self.take(len as usize)?;
        Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built Metadata v1 response parses to its brokers and controller.
    #[test]
    fn parses_metadata_v1() {
        let mut body = Vec::new();
        body.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        for (id, host, port) in [(1i32, "kafka", 29092i32), (2, "localhost", 9092)] {
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&(host.len() as i16).to_be_bytes());
            body.extend_from_slice(host.as_bytes());
            body.extend_from_slice(&port.to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes()); // no rack
        }
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes()); // topics
        let view = parse(&body).expect("parses");
        assert_eq!(view.controller_id, 1);
        assert_eq!(view.brokers[0].address(), "kafka:29092");
        assert_eq!(view.brokers[1].address(), "localhost:9092");
        assert!(
            parse(&body[..10]).is_err(),
            "truncated is an error, not a panic"
        );
    }

    /// A broker count from the wire that is negative or larger than the body could hold is an error, with no allocation for it.
    #[test]
    fn implausible_broker_counts_are_errors() {
        for count in [-1i32, i32::MIN, i32::MAX, 2] {
            let mut body = CORRELATION_ID.to_be_bytes().to_vec();
            body.extend_from_slice(&count.to_be_bytes());
            // Room for one broker at most.
            body.extend_from_slice(&[0u8; MIN_BROKER_BYTES + 4]);
            let err = parse(&body).expect_err("not a panic, an error");
            assert!(err.contains(&count.to_string()), "{err}");
        }
    }
}
