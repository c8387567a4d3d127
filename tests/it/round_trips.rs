//! How many times a batch waits for PostgreSQL: counted on the wire, by a
//! TCP relay between foodpipe's store and the real server.

use std::sync::{Arc, Mutex};

use events::OrderEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{self, TestDb};

/// Relays one port to PostgreSQL and counts round trips: each time the
/// client speaks after the server has answered (or first) is one.
struct Relay {
    port: u16,
    turns: Arc<Mutex<Turns>>,
}

#[derive(Default)]
struct Turns {
    count: usize,
    server_spoke: bool,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let turns = Arc::new(Mutex::new(Turns::default()));
        let counted = Arc::clone(&turns);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.expect("PostgreSQL");
                tokio::spawn(relay(client, server, Arc::clone(&counted)));
            }
        });
        Relay { port, turns }
    }

    fn reset(&self) {
        *self.turns.lock().expect("turns") = Turns::default();
    }

    fn round_trips(&self) -> usize {
        self.turns.lock().expect("turns").count
    }
}

async fn relay(client: TcpStream, server: TcpStream, turns: Arc<Mutex<Turns>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up_turns = Arc::clone(&turns);
    let up = async move {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            {
                let mut t = up_turns.lock().expect("turns");
                if t.server_spoke || t.count == 0 {
                    t.count += 1;
                }
                t.server_spoke = false;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            turns.lock().expect("turns").server_spoke = true;
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}

/// A batch that appends events, moves orders already in the view, skips a
/// duplicate and dead-letters a malformed record costs two round trips to
/// PostgreSQL once the connection has prepared its statements (the issue's
/// bound is three; before pipelining it was seven, eight with dead letters).
/// So does a batch with a SQL projection attached, and a batch of markers
/// only (no records).
#[tokio::test]
async fn a_batch_costs_two_round_trips() {
    let db = TestDb::create().await;
    db.migrated_store(None).await;
    let (relay, relayed_url) = {
        let url = db.url.clone();
        let at = url.find("127.0.0.1:5432").expect(
            "the test database URL names 127.0.0.1:5432 (the relay sits in front of that port)",
        );
        let relay = Relay::start("127.0.0.1:5432".to_owned()).await;
        let relayed = format!(
            "{}127.0.0.1:{}{}",
            &url[..at],
            relay.port,
            &url[at + "127.0.0.1:5432".len()..]
        );
        (relay, relayed)
    };
    let store = store::Store::connect(&store::StoreConfig {
        database_url: relayed_url,
        ..store::StoreConfig::default()
    })
    .await
    .expect("connect through the relay");

    let events: Vec<OrderEvent> = events::generator::Generator::new(Default::default())
        .take(400)
        .collect();
    let mut records = harness::source_records(&events);
    // Record 300 repeats record 250's event (a producer retry); record 301
    // is not JSON.
    records[300].event = records[250].event.clone();
    records[300].value = records[250].value.clone();
    records[301].value = Some(b"{not json".to_vec());
    records[301].event = Err(events::DecodeError::new(
        events::ErrorKind::MalformedJson,
        "expected a JSON object",
    ));
    let apply = |from: usize, to: usize| store::Batch {
        group: "g",
        topic: "t",
        partition: 0,
        from_offset: from as i64,
        next_offset: to as i64,
        records: &records[from..to],
        incarnation: 0,
        lease: None,
    };

    store.init_offset("g", "t", 0, 0).await.expect("offset");
    // The first batch opens the connection and prepares the statements.
    store.apply_batch(&apply(0, 200)).await.expect("batch 1");
    relay.reset();
    let applied = store.apply_batch(&apply(200, 400)).await.expect("batch 2");
    assert_eq!(applied.duplicates, 1, "{applied:?}");
    assert_eq!(applied.dead_letters.len(), 1, "{applied:?}");
    assert!(applied.orders > 0 && applied.events > 150, "{applied:?}");
    assert_eq!(
        relay.round_trips(),
        2,
        "a batch of 200 records with history, view and dead-letter writes"
    );

    // With a SQL projection attached (the repository's delivery_times),
    // its statements go with the writes: still two, once the store has
    // seen it attached and the connection has prepared its statements.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
    for def in store::projection::load_dir(&dir).expect("the repository's projections") {
        store
            .add_projection(&def, "g")
            .await
            .expect("add the projection");
    }
    let more: Vec<OrderEvent> =
        events::generator::Generator::new(events::generator::GeneratorConfig {
            seed: 77,
            ..Default::default()
        })
        .take(200)
        .collect();
    let mut later = harness::source_records(&more);
    for (i, r) in later.iter_mut().enumerate() {
        r.offset = 400 + i as i64;
    }
    let at = |from: usize, to: usize| store::Batch {
        from_offset: 400 + from as i64,
        next_offset: 400 + to as i64,
        records: &later[from..to],
        ..apply(0, 0)
    };
    store.apply_batch(&at(0, 100)).await.expect("batch 3");
    relay.reset();
    let applied = store.apply_batch(&at(100, 200)).await.expect("batch 4");
    assert!(
        applied
            .projection_times
            .iter()
            .any(|(name, _)| name == "delivery_times"),
        "{applied:?}"
    );
    assert_eq!(
        relay.round_trips(),
        2,
        "a batch with a SQL projection attached"
    );

    relay.reset();
    store
        .apply_batch(&store::Batch {
            from_offset: 600,
            next_offset: 602,
            records: &[],
            ..apply(0, 0)
        })
        .await
        .expect("markers only");
    assert_eq!(relay.round_trips(), 2, "a batch of markers only");

    // What the batches wrote is there, through a connection of its own.
    let pg = db.client().await;
    let count = |sql: &'static str| {
        let pg = &pg;
        async move { pg.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM order_events").await,
        598,
        "600 records, one duplicate, one dead letter"
    );
    assert_eq!(count("SELECT count(*) FROM dead_letters").await, 1);
    assert_eq!(
        count("SELECT next_offset FROM consumer_offsets WHERE group_id = 'g'").await,
        602
    );
    drop(store);
    db.drop_db().await;
}
