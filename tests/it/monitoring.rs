//! Issue 24: the shipped alerts and dashboard against a real Prometheus
//! (Debian's `prometheus` binary) scraping two real `foodpipe consume`
//! members started with default flags.
//!
//! `deploy/prometheus/alerts.yml` is loaded as it is; every `expr` of
//! `deploy/grafana/foodpipe.json` is sent to Prometheus's query API with
//! the dashboard's variables set as Grafana sets them for "All". The
//! rules' own logic is unit-tested by `promtool test rules` (`make
//! promtool`); this test checks that they and the dashboard fit what the
//! members really export, and that a stopped partition pages within
//! seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codecs::Raw;
use crate::harness::*;

const GROUP: &str = "order-processors";
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/foodpipe.json");

/// Dashboard panels that must show data while members run and consume.
/// Every query of the others must still be accepted.
const PANELS_WITH_DATA: &[&str] = &[
    "Lag per partition",
    "Events applied per second",
    "Batch apply time",
    "Partition states",
    "Rebalances per minute",
    "Dead letters",
    "Broker reach",
    "Members answering",
];

/// A Prometheus of the test's own: its config, rules and data in a
/// directory that goes with it.
struct Prometheus {
    address: String,
    dir: PathBuf,
    child: tokio::process::Child,
}

impl Prometheus {
    /// Scrapes `targets` as job `foodpipe` every second and evaluates
    /// `rules` every second.
    async fn start(targets: &[String], rules: &str) -> Prometheus {
        let binary = find_program("prometheus", &[]).unwrap_or_else(|| {
            panic!(
                "this test runs a real Prometheus and needs the `prometheus` binary \
                 (Debian's prometheus package): run `make up` to install it"
            )
        });
        let port = free_port();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("prometheus-{port}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{rules}'\n\
             scrape_configs:\n  - job_name: foodpipe\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let address = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let prometheus = Prometheus {
            address,
            dir,
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http10_get(&prometheus.address, "/-/ready").await {
                return prometheus;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus not ready within 30 s: {}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An API answer's `data`, failing the test unless its status is success.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = http10_get(&self.address, path)
            .await
            .unwrap_or_else(|| panic!("Prometheus does not answer {path}"));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: HTTP {status}, not JSON ({e}): {body}"));
        assert_eq!(answer["status"], "success", "{path}: HTTP {status}: {body}");
        answer["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts (pending or firing) named `name` whose `topic` is `topic`.
    async fn alerts(&self, name: &str, topic: &str) -> Vec<Value> {
        self.api("/api/v1/alerts").await["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name && a["labels"]["topic"] == topic)
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET as HTTP/1.0, so the answer comes whole (no chunked encoding) and
/// the connection closes after it. `None` if nothing answers.
async fn http10_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel's title and the `expr` of each of its targets, as Grafana
/// would send them with every template variable at "All": a multi-value
/// variable with `allValue` becomes that value, `$__rate_interval` and
/// `$__interval` what Grafana computes at a 1 s scrape interval.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let variables: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let all = v["allValue"]
                .as_str()
                .unwrap_or_else(|| panic!("variable {} has no allValue", v["name"]));
            (
                format!("${}", v["name"].as_str().expect("name")),
                all.to_owned(),
            )
        })
        .collect();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("panel title").to_owned();
        for target in panel["targets"].as_array().expect("targets") {
            let mut expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of {title} has no expr"))
                .to_owned();
            expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1s");
            // Longest names first, so `$topic` never eats `$topics`.
            let mut variables = variables.clone();
            variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
            for (name, value) in &variables {
                expr = expr
                    .replace(&format!("${{{}}}", &name[1..]), value)
                    .replace(name, value);
            }
            assert!(
                !expr.contains('$'),
                "{title}: unsubstituted variable in {expr}"
            );
            queries.push((title.clone(), expr));
        }
    }
    queries
}

/// A `consume` member with default flags (no metrics address given); its
/// log goes to `log`.
fn member(topic: &str, db: &TestDb, log: &Path) -> tokio::process::Child {
    let mut cmd = foodpipe(&["consume", "--topic", topic]);
    cmd.env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("member log"));
    cmd.spawn().expect("member starts")
}

/// Polls `check` every 200 ms until it gives a value, failing after `limit`
/// with `what` and the last state `check` described.
async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two members with default flags, scraped by a real Prometheus that loads
/// `deploy/prometheus/alerts.yml` unchanged: every rule loads and is
/// healthy; every query of `deploy/grafana/foodpipe.json` is accepted, and
/// the lag, throughput, apply time, state, rebalance, dead-letter, broker
/// and member panels have data; the offset mirror's drift is exported for
/// each partition and reaches 0; FoodpipePartitionStopped is not firing
/// while all partitions run (over several evaluations with the state
/// series scraped), and fires for partition 0 alone within seconds of a
/// corrupt batch stopping it.
#[tokio::test]
async fn prometheus_loads_the_alerts_and_dashboard_and_pages_on_a_stopped_partition() {
    let started = std::time::Instant::now();
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events_to(&topic, 300, 2401, 3).await;
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("monitoring-{topic}"));
    std::fs::create_dir_all(&logs).expect("log dir");
    let members: Vec<_> = (0..2)
        .map(|i| member(&topic, &db, &logs.join(format!("member-{i}.log"))))
        .collect();
    let member_logs = || {
        (0..2)
            .map(|i| {
                std::fs::read_to_string(logs.join(format!("member-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let addrs: Vec<String> = eventually(
        Duration::from_secs(60),
        "two members with metrics addresses",
        async || {
            let addrs: Vec<String> = metrics_addrs(&db, GROUP)
                .await
                .into_values()
                .flatten()
                .collect();
            if addrs.len() == 2 {
                Ok(addrs)
            } else {
                Err(format!("{addrs:?}\n{}", member_logs()))
            }
        },
    )
    .await;
    wait_caught_up(&db, &topic, Duration::from_secs(60)).await;

    let prometheus = Prometheus::start(&addrs, ALERTS).await;
    let rule_count = std::fs::read_to_string(ALERTS)
        .expect("alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(rule_count >= 7, "alerts.yml has {rule_count} alerts");
    let rules = prometheus.api("/api/v1/rules").await;
    let loaded: Vec<&Value> = rules["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    assert_eq!(loaded.len(), rule_count, "{rules}");
    assert!(
        loaded
            .iter()
            .any(|r| r["name"] == "FoodpipePartitionStopped"),
        "{rules}"
    );

    // Both members scraped, and the state of each of the topic's
    // partitions in Prometheus (a partition that moved between the members
    // is exported by both for a while).
    let stopped_states = format!(
        "max by (partition) (foodpipe_partition_state{{topic=\"{topic}\",state=\"stopped\"}})"
    );
    eventually(
        Duration::from_secs(30),
        "both members scraped, three partitions' states",
        async || {
            let up = prometheus.query("sum(up{job=\"foodpipe\"})").await;
            let states = prometheus.query(&stopped_states).await;
            let up_value = up.first().map(|s| s["value"][1].clone());
            if up_value == Some(Value::from("2")) && states.len() == 3 {
                Ok(())
            } else {
                Err(format!(
                    "up {up:?}, states {states:?}\n{}",
                    prometheus.log()
                ))
            }
        },
    )
    .await;
    // Every rule evaluates without error on the members' series.
    eventually(
        Duration::from_secs(10),
        "every rule evaluated and healthy",
        async || {
            let rules = prometheus.api("/api/v1/rules").await;
            let unhealthy: Vec<String> = rules["groups"]
                .as_array()
                .expect("rule groups")
                .iter()
                .flat_map(|g| g["rules"].as_array().expect("rules").iter())
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
                .collect();
            if unhealthy.is_empty() {
                Ok(())
            } else {
                Err(unhealthy.join("; "))
            }
        },
    )
    .await;

    // Not firing while every partition runs, over several evaluations
    // (one a second) of series that are there.
    for _ in 0..15 {
        let alerts = prometheus.alerts("FoodpipePartitionStopped", &topic).await;
        assert!(alerts.is_empty(), "before any stop: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The dashboard, query by query.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard"))
            .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    let titles: Vec<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for title in PANELS_WITH_DATA {
        assert!(titles.contains(title), "no panel {title:?} in {titles:?}");
    }
    // rate(...[1m]) needs two scrapes of a series: a few seconds of them.
    let mut empty = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        empty.clear();
        for (title, expr) in &queries {
            let result = prometheus.query(expr).await;
            if result.is_empty() && PANELS_WITH_DATA.contains(&title.as_str()) {
                empty.push(format!("{title}: {expr}"));
            }
        }
        if empty.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data while members run: {empty:#?}"
    );

    // Each member counted its first assignment; the three partitions were
    // each taken at least once.
    let rebalances = prometheus
        .query(&format!("foodpipe_rebalances_total{{topic=\"{topic}\"}}"))
        .await;
    assert_eq!(rebalances.len(), 2, "one series per member: {rebalances:?}");
    for series in &rebalances {
        let n: f64 = series["value"][1]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{rebalances:?}");
    }
    let taken = prometheus
        .query(&format!(
            "sum(foodpipe_partitions_taken_total{{topic=\"{topic}\"}})"
        ))
        .await;
    let taken: f64 = taken
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(taken >= 3.0, "partitions taken: {taken}");

    // The mirror's drift, for every partition, down to 0 once the broker
    // has PostgreSQL's offsets.
    let drift = format!("foodpipe_offset_mirror_drift{{topic=\"{topic}\"}}");
    eventually(
        Duration::from_secs(20),
        "mirror drift 0 for the three partitions",
        async || {
            let series = prometheus.query(&drift).await;
            let partitions: BTreeMap<String, String> = series
                .iter()
                .map(|s| {
                    (
                        s["metric"]["partition"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        s["value"][1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            if partitions.len() == 3 && partitions.values().all(|v| v == "0") {
                Ok(())
            } else {
                Err(format!("{partitions:?}"))
            }
        },
    )
    .await;

    // A control batch without its key cannot be decoded: partition 0 stops.
    let mut raw = Raw::connect(&bootstrap_servers()).await;
    raw.produce_ok(None, &topic, crate::codecs::keyless_marker().encode())
        .await;
    let put = std::time::Instant::now();
    let alerts = eventually(
        Duration::from_secs(30),
        "FoodpipePartitionStopped firing",
        async || {
            let alerts = prometheus.alerts("FoodpipePartitionStopped", &topic).await;
            if alerts.iter().any(|a| a["state"] == "firing") {
                Ok(alerts)
            } else {
                Err(format!("{alerts:?}\n{}", member_logs()))
            }
        },
    )
    .await;
    let latency = put.elapsed();
    assert_eq!(alerts.len(), 1, "only partition 0 stopped: {alerts:?}");
    let labels = &alerts[0]["labels"];
    assert_eq!(labels["partition"], "0", "{alerts:?}");
    assert_eq!(labels["group"], GROUP, "{alerts:?}");
    assert_eq!(labels["severity"], "page", "{alerts:?}");
    // The dashboard's table of partitions not running names it.
    let (_, not_running) = queries
        .iter()
        .find(|(title, _)| title == "Partitions not running")
        .expect("the not-running panel");
    let rows = prometheus.query(not_running).await;
    assert!(
        rows.iter().any(|r| r["metric"]["topic"] == topic.as_str()
            && r["metric"]["partition"] == "0"
            && r["metric"]["state"] == "stopped"),
        "{rows:?}"
    );

    for m in &members {
        signal(m, "TERM");
    }
    for m in members {
        let _ = tokio::time::timeout(Duration::from_secs(20), m.wait_with_output()).await;
    }
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&logs);
    db.drop_db().await;
    eprintln!(
        "monitoring: alert fired {:.1} s after the corrupt batch; test took {:.1} s",
        latency.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
