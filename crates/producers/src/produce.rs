//! `foodpipe produce`: realistic order events into the topic.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::outbound::{self, Chunks, DriveConfig, Outgoing};
pub use crate::outbound::{Destination, PartitionCount, ProduceSummary};
use events::generator::{Generator, GeneratorConfig};

/// When a produce run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// After this many events.
    Count(u64),
    /// After this long.
    Duration(Duration),
}

/// Everything `produce` needs.
#[derive(Debug, Clone)]
pub struct ProduceConfig {
    pub destination: Destination,
    pub amount: Amount,
    /// Events per second to aim for; `None` for as fast as the broker takes them.
    pub rate: Option<f64>,
    pub generator: GeneratorConfig,
}

/// Produces generated events until the amount is reached or `shutdown`
/// completes. Each record is keyed by `customer_id` and timestamped with
/// the event's `occurred_at`, so offset-for-timestamp lookups agree with it.
pub async fn run(
    config: ProduceConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ProduceSummary> {
    let drive = DriveConfig {
        destination: config.destination,
        expected: match config.amount {
            Amount::Count(n) => Some(n),
            Amount::Duration(_) => None,
        },
    };
    let amount = config.amount;
    let rate = config.rate;
    let generator = Generator::new(config.generator);
    outbound::drive(
        drive,
        move |chunks, _errors| generate(generator, amount, rate, chunks),
        shutdown,
    )
    .await
}

/// Feeds generated events into `chunks`, paced to `rate` if given.
fn generate(generator: Generator, amount: Amount, rate: Option<f64>, chunks: &mut Chunks) {
    let started = Instant::now();
    for (n, event) in generator.enumerate() {
        match amount {
            Amount::Count(count) if n as u64 >= count => return,
            Amount::Duration(d) if started.elapsed() >= d => return,
            _ => {}
        }
        if let Some(rate) = rate {
            // Event n is due at n / rate seconds after the start.
            let due = Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                // What is gathered goes out now, not after the wait.
                if chunks.flush().is_err() {
                    return;
                }
                std::thread::sleep(wait);
            }
        }
        let out = Outgoing {
            key: Some(event.customer_id.clone().into_bytes()),
            value: event.to_json(),
            timestamp: event.occurred_at,
        };
        if chunks.push(out).is_err() {
            return; // The producer side stopped (shutdown).
        }
    }
}
