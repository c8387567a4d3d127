//! `foodpipe watch` in a real terminal: tmux runs it in a pane of a known
//! size, the test types keys into the pane and reads the screen back. Also
//! `--once`, the same frame as text.

use std::collections::BTreeMap;
use std::process::Command as StdCommand;
use std::time::Duration;

use crate::harness::{
    PrivateBroker, TestDb, bootstrap_servers, consume_until_caught_up, foodpipe, produce_events_at,
    produce_events_to, random_topic_name, run_ok, run_within, spawn_consumer, stop_all,
};

/// The prompt of the shell in the pane: seen again once watch has exited
/// and the terminal is restored.
const PROMPT: &str = "watch-test$";

/// A tmux server of the test's own (its own socket), with one window
/// running a shell, `width` x `height`.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("foodpipe-{}", random_topic_name()),
        };
        let out = tmux
            .command(&[
                "new-session",
                "-d",
                "-s",
                "w",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
                &format!("env PS1='{PROMPT} ' sh"),
            ])
            .output()
            .expect("tmux runs (make up installs it)");
        assert!(out.status.success(), "tmux: {out:?}");
        tmux
    }

    fn command(&self, args: &[&str]) -> StdCommand {
        let mut cmd = StdCommand::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` as it is, then presses `keys` (tmux key names).
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "w", "-l", text]);
    }

    fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "w", key]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "w"])
    }

    /// True if any cell of the screen has a colour (SGR 30-37, 38, 40-47,
    /// 48, 90-97, 100-107; 39 and 49 are the terminal's own colours).
    fn coloured(&self) -> bool {
        let screen = self.run(&["capture-pane", "-p", "-e", "-t", "w"]);
        screen.split("\x1b[").skip(1).any(|sgr| {
            let params = sgr.split_once('m').map_or("", |(p, _)| p);
            params
                .split(';')
                .filter_map(|p| p.parse::<u16>().ok())
                .any(|n| matches!(n, 30..=37 | 38 | 40..=47 | 48 | 90..=97 | 100..=107))
        })
    }

    /// True while the program in the pane uses the alternate screen.
    fn alternate_on(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "w", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// Polls the screen until `ok` holds, failing with the last screen
    /// after `limit`.
    async fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not seen within {limit:?}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Tmux {
    /// A shell in a `width` x `height` pane starts `watch` with `args`
    /// against `bootstrap` and `db`, with `NO_COLOR=1` if `no_color`; returns once the frame shows
    /// `partitions` rows with log ends and stored offsets.
    async fn watch(
        (width, height): (u16, u16),
        no_color: bool,
        bootstrap: &str,
        db: &TestDb,
        args: &str,
        partitions: usize,
    ) -> (Tmux, String) {
        let tmux = Tmux::start(width, height);
        tmux.wait_for("the shell prompt", Duration::from_secs(10), |s| {
            s.contains(PROMPT)
        })
        .await;
        let log = tmux.log();
        tmux.type_text(&format!(
            "env -u RUST_LOG -u NO_COLOR {}KAFKA_BOOTSTRAP_SERVERS='{bootstrap}' DATABASE_URL='{}' '{}' watch {args} 2>'{}'",
            if no_color { "NO_COLOR=1 " } else { "" },
            db.url,
            env!("CARGO_BIN_EXE_foodpipe"),
            log.display()
        ));
        tmux.press("Enter");
        let screen = tmux
            .wait_for("every partition row", Duration::from_secs(30), |s| {
                stored(s).len() == partitions && ends(s).len() == partitions
            })
            .await;
        assert!(tmux.alternate_on(), "watch draws on the alternate screen");
        (tmux, screen)
    }

    /// Where watch's stderr goes.
    fn log(&self) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.log", self.socket))
    }

    /// `q`: watch exits with status 0, the alternate screen is left and the
    /// shell prompt is back; watch wrote no error.
    async fn quit(&self) {
        self.press("q");
        self.wait_for("the shell prompt after q", Duration::from_secs(10), |s| {
            s.trim_end().ends_with(PROMPT)
        })
        .await;
        assert!(!self.alternate_on(), "the alternate screen is left");
        self.type_text("echo exit=$?");
        self.press("Enter");
        self.wait_for("exit status 0", Duration::from_secs(10), |s| {
            s.contains("exit=0")
        })
        .await;
        let errors = std::fs::read_to_string(self.log()).unwrap_or_default();
        assert!(
            !errors.contains("panicked") && !errors.contains("error"),
            "stderr: {errors}"
        );
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]).output();
    }
}

/// The partition rows of a frame: partition -> [P, START, END, STORED, LAG].
fn rows(screen: &str) -> BTreeMap<i32, Vec<String>> {
    screen
        .lines()
        .skip_while(|l| !l.starts_with("PARTITIONS"))
        .take_while(|l| !l.starts_with("MEMBERS"))
        .filter_map(|l| {
            let words: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            let p = words.first()?.parse::<i32>().ok()?;
            (words.len() >= 7).then(|| (p, words[..5].to_vec()))
        })
        .collect()
}

/// The stored offsets `foodpipe status` prints.
async fn status_offsets(topic: &str, db: &TestDb) -> BTreeMap<i32, i64> {
    let mut cmd = foodpipe(&["status", "--topic", topic]);
    cmd.env("DATABASE_URL", &db.url);
    let out = run_ok(cmd).await;
    out.lines()
        .skip_while(|l| !l.starts_with("stored offsets"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("partition "))
        .map(|l| {
            let (p, o) = l.split_once(':').expect("partition N: offset");
            (
                p.trim().parse().expect("partition"),
                o.trim().parse().expect("offset"),
            )
        })
        .collect()
}

/// The STORED column of a frame, by partition.
fn stored(screen: &str) -> BTreeMap<i32, i64> {
    rows(screen)
        .into_iter()
        .filter_map(|(p, r)| Some((p, r[3].parse().ok()?)))
        .collect()
}

fn ends(screen: &str) -> BTreeMap<i32, i64> {
    rows(screen)
        .into_iter()
        .filter_map(|(p, r)| Some((p, r[2].parse().ok()?)))
        .collect()
}

/// In a real terminal: the screen names the topic and shows every
/// partition's stored offset as `status` prints it, in colour; a running consumer
/// appears as the owner and member; END and STORED move while a producer
/// and the consumer run; `q` leaves the alternate screen and returns to the
/// shell prompt with exit status 0.
#[tokio::test]
async fn live_view_follows_a_producer_and_a_consumer_and_q_restores_the_terminal() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 300, 1501, 3).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let status = status_offsets(&topic, &db).await;
    assert_eq!(status.len(), 3, "{status:?}");

    // Wide enough for a long host name in the member id.
    let (tmux, screen) = Tmux::watch(
        (120, 30),
        false,
        &bootstrap_servers(),
        &db,
        &format!("--topic {topic} --interval 500ms"),
        3,
    )
    .await;
    assert!(
        screen.starts_with(&format!(
            "foodpipe watch  topic {topic}  group order-processors"
        )),
        "{screen}"
    );
    assert_eq!(
        stored(&screen),
        status,
        "STORED is what status says:\n{screen}"
    );
    for (p, row) in rows(&screen) {
        assert_eq!(row[4], "0", "partition {p} has no lag:\n{screen}");
    }
    assert!(tmux.coloured(), "without NO_COLOR the states are coloured");
    let (start_ends, start_stored) = (ends(&screen), stored(&screen));

    // A consumer joins: its member id shows as owner and member.
    let consumer = spawn_consumer(&topic, &db, &["--metrics-addr", "off"]);
    let pg = db.client().await;
    let member: String = loop {
        if let Ok(row) = pg
            .query_one("SELECT member_id FROM group_members", &[])
            .await
        {
            break row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let screen = tmux
        .wait_for(
            "the consumer as owner of every partition",
            Duration::from_secs(60),
            |s| s.lines().filter(|l| l.contains(member.as_str())).count() >= 4,
        )
        .await;
    assert!(screen.contains("MEMBERS"), "{screen}");

    // A producer runs: END grows, and the consumer moves STORED after it.
    let mut producer = foodpipe(&[
        "produce",
        "--topic",
        &topic,
        "--duration",
        "8s",
        "--rate",
        "100",
        "--quiet",
    ]);
    producer.kill_on_drop(true);
    let producer = producer.spawn().expect("producer starts");
    tmux.wait_for("END and STORED moving", Duration::from_secs(60), |s| {
        let (e, st) = (ends(s), stored(s));
        e.len() == 3
            && st.len() == 3
            && e.iter().any(|(p, end)| *end > start_ends[p])
            && st.iter().any(|(p, o)| *o > start_stored[p])
    })
    .await;
    let produced = producer.wait_with_output().await.expect("producer ends");
    assert!(produced.status.success(), "{produced:?}");
    stop_all(vec![consumer]).await;

    tmux.quit().await;
    db.drop_db().await;
}

/// In an 80x24 terminal, the key explorer (`/`) shows murmur2, toPositive
/// and the partition of a typed key, and the partition equals what
/// `foodpipe partition` prints; under NO_COLOR no cell has a colour; Esc
/// closes it and q quits.
#[tokio::test]
async fn key_explorer_agrees_with_foodpipe_partition() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 60, 1502, 6).await;
    consume_until_caught_up(&topic, &db, &[]).await;

    let (tmux, screen) = Tmux::watch(
        (80, 24),
        true,
        &bootstrap_servers(),
        &db,
        &format!("--topic {topic}"),
        6,
    )
    .await;
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    assert!(!tmux.coloured(), "NO_COLOR: no cell has a colour");

    for key in ["CUST-0042", "order-7"] {
        tmux.press("/");
        tmux.type_text(key);
        let screen = tmux
            .wait_for("the explorer's answer", Duration::from_secs(10), |s| {
                s.contains(&format!("{key}_")) && s.contains("% 6")
            })
            .await;
        let shown: u32 = screen
            .lines()
            .find_map(|l| l.split("% 6").nth(1))
            .and_then(|rest| rest.split("partition").nth(1))
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no partition in the explorer:\n{screen}"));
        let expected = run_ok(foodpipe(&["partition", "--partitions", "6", key])).await;
        assert_eq!(
            expected.trim_end(),
            format!("{key}\t{shown}"),
            "watch and partition agree on {key}:\n{screen}"
        );
        let murmur = partition::murmur2(key.as_bytes());
        assert!(
            screen.contains(&format!("0x{:08x} ({murmur})", murmur as u32)),
            "{screen}"
        );
        tmux.press("Escape");
        tmux.wait_for("the explorer closed", Duration::from_secs(10), |s| {
            !s.contains("% 6")
        })
        .await;
    }
    tmux.quit().await;
    db.drop_db().await;
}

/// The broker going away shows as a banner while the view goes on with the
/// last known offsets, and goes once the broker is back.
#[tokio::test]
async fn a_broker_outage_is_a_banner_not_a_crash() {
    let mut broker = PrivateBroker::start().await;
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_at(&broker.address, &topic, 90, 1503).await;
    let mut consume = foodpipe(&["consume", "--until-caught-up", "--topic", &topic]);
    consume
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", &broker.address);
    run_ok(consume).await;

    let (tmux, before) = Tmux::watch(
        (100, 30),
        true,
        &broker.address,
        &db,
        &format!("--topic {topic} --interval 500ms --kafka-timeout-secs 2"),
        3,
    )
    .await;
    broker.kill().await;
    let during = tmux
        .wait_for("the broker banner", Duration::from_secs(30), |s| {
            s.contains("! broker:")
        })
        .await;
    assert_eq!(ends(&during), ends(&before), "last known log ends kept");
    assert_eq!(stored(&during), stored(&before));
    broker.restart().await;
    tmux.wait_for("the banner gone", Duration::from_secs(60), |s| {
        !s.contains("! broker:") && ends(s).len() == 3
    })
    .await;
    tmux.quit().await;
    db.drop_db().await;
}

/// `--once` prints the frame as text: every partition's stored offset as
/// `status` prints it, log ends, no lag; an unreachable broker is a banner
/// over what PostgreSQL says, not a failure; without --once and without a
/// terminal, one line says to add it.
#[tokio::test]
async fn once_prints_the_frame_as_text() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 120, 1504, 4).await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let status = status_offsets(&topic, &db).await;

    let mut once = foodpipe(&["watch", "--once", "--topic", &topic, "--width", "80"]);
    once.env("DATABASE_URL", &db.url);
    let frame = run_ok(once).await;
    assert!(
        frame.starts_with(&format!("foodpipe watch  topic {topic}")),
        "{frame}"
    );
    assert_eq!(stored(&frame), status, "{frame}");
    assert_eq!(ends(&frame), status, "caught up: END = STORED\n{frame}");
    assert!(frame.contains("lag 0 "), "{frame}");
    assert!(frame.lines().all(|l| l.chars().count() <= 80), "{frame}");
    assert!(!frame.contains('\x1b'), "plain text, no escape sequences");

    let mut unreachable = foodpipe(&[
        "watch",
        "--once",
        "--topic",
        &topic,
        "--kafka-timeout-secs",
        "1",
    ]);
    unreachable
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1");
    let out = run_within(unreachable, Duration::from_secs(60)).await;
    let frame = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        frame.contains("! broker: cannot reach any bootstrap server of [127.0.0.1:1]"),
        "{frame}"
    );
    assert_eq!(
        stored(&frame),
        status,
        "PostgreSQL's side still shown:\n{frame}"
    );

    let mut piped = foodpipe(&["watch", "--topic", &topic]);
    piped.env("DATABASE_URL", &db.url);
    let out = run_within(piped, Duration::from_secs(30)).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: watch draws on a terminal and stdout is not one; add --once to print one frame as text"
    );
    db.drop_db().await;
}

/// `watch` cannot write: the store it reads through is a session
/// PostgreSQL keeps read-only, so even a write asked of it by mistake is
/// refused (SQLSTATE 25006), while the same statement on a normal store
/// of the same database goes through.
#[tokio::test]
async fn watch_reads_through_sessions_that_refuse_writes() {
    let db = TestDb::create().await;
    let writable = db.migrated_store(None).await;
    let config = store::StoreConfig {
        database_url: db.url.clone(),
        ..store::StoreConfig::default()
    };
    let read_only = tui::open_store(&config).await.expect("open for watch");
    assert!(read_only.store().is_read_only());
    let write = "UPDATE consumer_offsets SET next_offset = next_offset";
    let refused = read_only
        .store()
        .client()
        .await
        .expect("a connection")
        .batch_execute(write)
        .await
        .expect_err("a read-only session refuses a write");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused}"
    );
    writable
        .client()
        .await
        .expect("a connection")
        .batch_execute(write)
        .await
        .expect("a normal session writes");
    // What watch reads still reads.
    assert!(
        read_only
            .store()
            .members("g")
            .await
            .expect("members")
            .is_empty()
    );
    db.drop_db().await;
}
