//! `foodpipe send`: lines from stdin to the topic, like
//! `kafka-console-producer --property parse.key=true`.
//!
//! Each line is `KEY<TAB>VALUE`, or just `VALUE` for a record without a
//! key (placed round-robin). Lines are bytes, not necessarily UTF-8, so a
//! hand-written bad record reaches the topic exactly as typed; that is how
//! dead letters can be demonstrated.

use std::future::Future;
use std::io::{BufRead, BufReader, Read};

use chrono::Utc;

use crate::outbound::{self, DriveConfig, Outgoing};
pub use crate::outbound::{Destination, ProduceSummary};

/// Everything `send` needs.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub destination: Destination,
    /// Separates the key from the value on a line.
    pub separator: u8,
}

/// Splits a line into key and value at the first separator.
fn split_line(line: &[u8], separator: u8) -> (Option<Vec<u8>>, Vec<u8>) {
    match line.iter().position(|&b| b == separator) {
        Some(i) => (Some(line[..i].to_vec()), line[i + 1..].to_vec()),
        None => (None, line.to_vec()),
    }
}

/// Produces one record per non-empty line of `input`.
pub async fn run(
    config: SendConfig,
    input: BufReader<Box<dyn Read + Send>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ProduceSummary> {
    let separator = config.separator;
    let drive = DriveConfig {
        destination: config.destination,
        expected: None,
    };
    outbound::drive(
        drive,
        move |chunks, errors| {
            let mut input = input;
            let mut line = Vec::new();
            let mut number = 0u64;
            loop {
                // Without a whole line buffered, reading may wait for
                // input: what is gathered goes out first.
                if !input.buffer().contains(&b'\n') && chunks.flush().is_err() {
                    return;
                }
                line.clear();
                number += 1;
                match input.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if let Ok(mut slot) = errors.lock() {
                            *slot = Some(format!("cannot read input line {number}: {e}"));
                        }
                        return;
                    }
                }
                let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
                let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                if trimmed.is_empty() {
                    continue;
                }
                let (key, value) = split_line(trimmed, separator);
                let out = Outgoing {
                    key,
                    value,
                    timestamp: Utc::now(),
                };
                if chunks.push(out).is_err() {
                    return;
                }
            }
        },
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line splits at its first tab; a line without one is a keyless value.
    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(
            split_line(b"CUST-1\t{\"a\":\"x\ty\"}", b'\t'),
            (Some(b"CUST-1".to_vec()), b"{\"a\":\"x\ty\"}".to_vec())
        );
        assert_eq!(
            split_line(b"just a value", b'\t'),
            (None, b"just a value".to_vec())
        );
        assert_eq!(
            split_line(b"\tvalue", b'\t'),
            (Some(vec![]), b"value".to_vec())
        );
    }
}
