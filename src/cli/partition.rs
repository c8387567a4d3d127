//! `partition`: where Kafka's default partitioner puts a key.

use std::io::BufRead;

use clap::Args;

use super::args::parse_partitions;

#[derive(Debug, Args)]
pub(crate) struct PartitionArgs {
    /// Number of partitions of the topic.
    #[arg(long, short = 'n', value_parser = parse_partitions, allow_negative_numbers = true)]
    partitions: u32,
    /// Keys to place; `-` reads one key per line from stdin.
    #[arg(required = true)]
    keys: Vec<String>,
}

pub(crate) fn partition(args: PartitionArgs) -> anyhow::Result<()> {
    // parse_partitions refuses 0; the type says so to the partitioner.
    let partitions = std::num::NonZeroU32::new(args.partitions)
        .ok_or_else(|| anyhow::anyhow!("--partitions must be at least 1"))?;
    let place = |key: &str| {
        let p = partition::partition_for_key(key.as_bytes(), partitions);
        println!("{key}\t{p}");
    };
    for key in &args.keys {
        if key == "-" {
            for line in std::io::stdin().lock().lines() {
                place(&line?);
            }
        } else {
            place(key);
        }
    }
    Ok(())
}
