//! The opt-in `tls` and `sasl` features, against real peers. Compiled only
//! with both features: `make test` runs
//! `cargo test --features tls,sasl --test it security`.
//!
//! - Kafka SASL_SSL: a private Tansu that requires SCRAM authentication,
//!   behind a TLS-terminating socat (Tansu 0.6.0's own TLS listener cannot
//!   be configured: its `--cert` and `--key` flags conflict), with a CA and
//!   a server certificate for `localhost` made here by openssl.
//! - PostgreSQL `sslmode=require`: the local server's own certificate
//!   (Debian's snakeoil, for `localhost`), trusted through PGSSLROOTCERT.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::harness::{
    PrivateBroker, TestDb, db_url_with_host, foodpipe, random_topic_name, run_ok, run_within,
};

/// A CA, and a server certificate and key for `localhost` signed by it.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (make up installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=foodpipe test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// socat terminating TLS on `port` and forwarding to `backend`.
async fn tls_proxy(port: u16, backend: &str, certs: &Certs) -> tokio::process::Child {
    let listen = format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
        certs.cert.display(),
        certs.key.display()
    );
    let child = Command::new("socat")
        .args([listen.as_str(), &format!("TCP:{backend}")])
        .stderr(std::process::Stdio::null()) // it logs each refused handshake
        .kill_on_drop(true)
        .spawn()
        .expect("socat runs (make up installs it)");
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("socat did not listen on {port}");
}

/// `foodpipe` aimed at `bootstrap` with SASL_SSL settings in the
/// environment, as a deployment would set them.
fn secured(args: &[&str], bootstrap: &str, ca: &Path, password: &str) -> Command {
    let mut cmd = foodpipe(args);
    cmd.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
        .env("KAFKA_SSL_CA_LOCATION", ca)
        .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        .env("KAFKA_SASL_USERNAME", "alice")
        .env("KAFKA_SASL_PASSWORD", password);
    cmd
}

/// Over SASL_SSL (SCRAM-SHA-512 inside TLS) the pipeline produces and folds
/// every event and mirrors its offsets to the broker; a wrong password and an untrusted certificate each fail in
/// one line that shows no password.
#[tokio::test]
async fn sasl_ssl_round_trip() {
    let proxy_port = crate::harness::free_port();
    let advertised = format!("tcp://localhost:{proxy_port}");
    let mut broker = PrivateBroker::start_advertising(Some(&advertised)).await;
    let password = format!("pw-{:08x}", rand::random::<u32>());
    let created = std::process::Command::new(crate::harness::which_tansu())
        .args([
            "user",
            "create",
            "--broker",
            &format!("tcp://{}", broker.address),
        ])
        .args(["alice", &password, "--mechanism", "scram512"])
        .output()
        .expect("tansu user create runs");
    assert!(created.status.success(), "tansu user create: {created:?}");
    broker
        .restart_with(&["--authentication"], Some(&advertised))
        .await;
    let certs = make_certs(broker.dir());
    let _proxy = tls_proxy(proxy_port, &broker.address, &certs).await;
    let bootstrap = format!("localhost:{proxy_port}");

    let db = TestDb::create().await;
    let topic = random_topic_name();
    run_ok(secured(
        &["produce", "--topic", &topic, "--count", "400"],
        &bootstrap,
        &certs.ca,
        &password,
    ))
    .await;
    let mut consume = secured(
        &["consume", "--topic", &topic, "--until-caught-up"],
        &bootstrap,
        &certs.ca,
        &password,
    );
    consume.env("DATABASE_URL", &db.url);
    run_ok(consume).await;

    for (what, mut cmd, expected) in [
        (
            "wrong password",
            secured(
                &["topics", "list", "--kafka-timeout-secs", "3"],
                &bootstrap,
                &certs.ca,
                "not-the-password",
            ),
            [
                "invalid proof",
                "check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
            ],
        ),
        (
            "untrusted certificate",
            {
                let mut cmd = secured(
                    &["topics", "list", "--kafka-timeout-secs", "3"],
                    &bootstrap,
                    &certs.ca,
                    &password,
                );
                cmd.env_remove("KAFKA_SSL_CA_LOCATION"); // Mozilla's roots do not know our CA
                cmd
            },
            ["UnknownIssuer", "check KAFKA_SSL_CA_LOCATION"],
        ),
    ] {
        cmd.env("RUST_LOG", "off");
        let out = run_within(cmd, Duration::from_secs(60)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        for text in expected {
            assert!(stderr.contains(text), "{what}: {text:?} in {stderr}");
        }
        assert!(
            !stderr.contains("not-the-password") && !stderr.contains(&password),
            "{what}: {stderr}"
        );
    }

    // The oracle reads the topic with a plaintext client: same data, no
    // authentication, advertising its own address.
    broker.restart_with(&[], None).await;
    crate::harness::assert_db_is_fold_of_topic_at(&broker.address, &db, &topic, "order-processors")
        .await;
    // The offset mirror committed over the same SASL_SSL connection
    // settings: the broker kept what it was sent while it required both.
    let stored = crate::harness::stored_offsets(&db, "order-processors", &topic).await;
    assert_eq!(
        crate::harness::broker_committed(
            "confluent",
            &broker.address,
            "order-processors",
            &topic,
            stored.len() as i32
        )
        .await,
        stored,
        "the mirror's offsets, committed over SASL_SSL"
    );
    db.drop_db().await;
}

/// With `sslmode=require` foodpipe talks TLS to PostgreSQL and verifies
/// the server's certificate: trusted through PGSSLROOTCERT it folds the
/// topic; without it the handshake fails naming the unknown issuer.
#[tokio::test]
async fn postgres_over_tls() {
    let db = TestDb::create().await;
    let pg = db.client().await;
    let ssl: String = pg
        .query_one("SHOW ssl", &[])
        .await
        .expect("SHOW ssl")
        .get(0);
    assert_eq!(
        ssl, "on",
        "this test needs PostgreSQL with ssl=on (Debian's default)"
    );
    let cert_file: String = pg
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .expect("SHOW ssl_cert_file")
        .get(0);
    let url = format!("{}?sslmode=require", db_url_with_host(&db.url, "localhost"));
    let topic = random_topic_name();
    crate::harness::produce_events(&topic, 200, 41).await;

    let mut untrusted = foodpipe(&["consume", "--topic", &topic, "--until-caught-up"]);
    untrusted
        .env("DATABASE_URL", &url)
        .env_remove("PGSSLROOTCERT");
    let out = run_within(untrusted, Duration::from_secs(60)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an unverified server was accepted: {out:?}"
    );
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    let mut trusted = foodpipe(&["consume", "--topic", &topic, "--until-caught-up"]);
    trusted
        .env("DATABASE_URL", &url)
        .env("PGSSLROOTCERT", &cert_file);
    run_ok(trusted).await;
    crate::harness::assert_db_is_fold_of_topic(&db, &topic, "order-processors").await;
    db.drop_db().await;
}
