//! Projections: what they cost the fold, how fast a new one fills from
//! history, and how long `asof --projection` takes (issue 20's figures).
//!
//! One run, one database, the same N generated events (default 1,000,000):
//!
//! 1. the fold with `orders` and `history` alone (no SQL projection
//!    attached), then the same events folded into a second schema with
//!    every shipped projection (`restaurant_daily`, `customer_stats`,
//!    `delivery_times`): events/s of each, and the ratio;
//! 2. `restaurant_daily` added to the first schema (whose history holds
//!    the N events) with `Store::add_projection`, as `projection add`
//!    does: events/s against the live fold rate with every projection;
//! 3. `asof` of `restaurant_daily` over that history: seconds.
//!
//! `make bench-projections` runs it; needs the stack of `make up`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use store::{Store, StoreConfig};

fn main() {
    let events = common::events_from_env(1_000_000);
    let (name, url) = common::create_database("projections");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let figures = runtime.block_on(run(&url, events));
    common::drop_database(&name);
    let Figures {
        per_projection,
        plain,
        all,
        fill,
        asof,
    } = figures;
    println!(
        "{events} events, {} partitions, batches of ~1 MiB",
        common::PARTITIONS
    );
    println!();
    println!("| what | figure | ratio |");
    println!("|---|---|---|");
    println!("| fold, orders + history alone | {plain:.0} events/s | 1.00x |");
    println!(
        "| fold, + restaurant_daily, customer_stats, delivery_times | {all:.0} events/s | {:.2}x |",
        all / plain
    );
    println!(
        "| restaurant_daily filled from history (projection add) | {fill:.0} events/s | {:.2}x the fold with every projection |",
        fill / all
    );
    println!("| asof --projection restaurant_daily over the whole history | {asof:.2} s | |");
    println!();
    println!("Time in each projection's apply, fold with all of them (three writers, summed):");
    for (name, seconds) in per_projection {
        println!("- {name}: {seconds:.1} s");
    }
}

struct Figures {
    /// Seconds each projection's apply took over the fold with all of them.
    per_projection: common::ProjectionSeconds,
    plain: f64,
    all: f64,
    fill: f64,
    asof: f64,
}

async fn store(url: &str, schema: &str) -> Store {
    let store = Store::connect(&StoreConfig {
        database_url: url.to_owned(),
        pool_size: common::PARTITIONS as usize + 1,
        schema: Some(schema.to_owned()),
        ..StoreConfig::default()
    })
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn run(url: &str, events: usize) -> Figures {
    let batches = Arc::new(common::batches(events));

    let plain = store(url, "plain").await;
    let all = store(url, "all_projections").await;
    let mut definitions = store::projection::builtins();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
    definitions.extend(store::projection::load_dir(&shipped).expect("projections/"));
    for def in &definitions {
        all.install_projection(def).await.expect("install");
    }
    // Each schema folds half the stream, then the other half, in the order
    // plain, all, all, plain: what one run leaves the server doing
    // (checkpoints, autovacuum) falls on both alike.
    let half = batches.iter().map(Vec::len).max().unwrap_or(0) / 2;
    let (a1, _) = common::fold_range(&plain, &batches, 0..half).await;
    let (b1, t1) = common::fold_range(&all, &batches, 0..half).await;
    let (b2, t2) = common::fold_range(&all, &batches, half..usize::MAX).await;
    let (a2, _) = common::fold_range(&plain, &batches, half..usize::MAX).await;
    let (plain_secs, all_secs) = (a1 + a2, b1 + b2);
    let mut per_projection = t1;
    for (name, t) in t2 {
        *per_projection.entry(name).or_default() += t;
    }

    let daily = definitions
        .iter()
        .find(|d| d.name == "restaurant_daily")
        .expect("restaurant_daily");
    let started = Instant::now();
    let added = plain
        .add_projection(daily, "bench")
        .await
        .expect("add restaurant_daily");
    let fill_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        added,
        store::Ensured::Added {
            events: events as i64
        }
    );

    let started = Instant::now();
    let tables = plain
        .projection_as_of(
            "restaurant_daily",
            chrono::Utc::now() + chrono::Duration::days(3650),
        )
        .await
        .expect("asof");
    let asof_secs = started.elapsed().as_secs_f64();
    assert!(!tables[0].rows.is_empty());

    Figures {
        per_projection,
        plain: events as f64 / plain_secs,
        all: events as f64 / all_secs,
        fill: events as f64 / fill_secs,
        asof: asof_secs,
    }
}
