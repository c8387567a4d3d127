//! The command line as an operator meets it: read-only commands that only
//! read (a SELECT-only role, an unknown schema, a database never migrated),
//! `migrate`, replay's schema flags, and record bytes escaped for the
//! terminal.

use std::time::Duration;

use crate::harness::{
    TestDb, consume_until_caught_up, foodpipe, produce_events, random_topic_name, run_ok,
    run_within, send_lines, tail_from_beginning,
};

/// Every read-only command, with the flags it needs for `topic`.
fn read_only_commands(topic: &str) -> Vec<Vec<String>> {
    let now = chrono::Utc::now().to_rfc3339();
    [
        vec!["status", "--topic", topic],
        vec!["asof", now.as_str()],
        vec!["dead-letters", "list", "--topic", topic],
        vec!["dead-letters", "show", "1"],
        vec!["group", "list"],
        vec!["group", "describe", "--topic", topic],
        vec!["watch", "--once", "--topic", topic],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(str::to_owned).collect())
    .collect()
}

/// Runs `args` with `DATABASE_URL=url` (and `--schema` if given).
async fn run_with(args: &[String], url: &str, schema: Option<&str>) -> std::process::Output {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Some(schema) = schema {
        all.extend(["--schema", schema]);
    }
    let mut cmd = foodpipe(&all);
    cmd.env("DATABASE_URL", url);
    run_within(cmd, Duration::from_secs(60)).await
}

/// Schemas and tables in the database, apart from PostgreSQL's own.
async fn user_objects(db: &TestDb) -> (Vec<String>, i64) {
    let pg = db.client().await;
    let schemas = pg
        .query(
            "SELECT nspname::text FROM pg_namespace \
             WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
            &[],
        )
        .await
        .expect("schemas")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let relations: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'",
            &[],
        )
        .await
        .expect("relations")
        .get(0);
    (schemas, relations)
}

/// Against a database never migrated and a schema that does not exist, each read-only command prints one line naming the schema and `foodpipe migrate`, exits 2 and creates nothing; `foodpipe migrate` (idempotent, saying what it applied) then makes them work.
#[tokio::test]
async fn read_only_commands_refuse_an_unmigrated_schema_and_create_nothing() {
    let topic = random_topic_name();
    produce_events(&topic, 30, 1301).await;
    let db = TestDb::create().await;
    let before = user_objects(&db).await;
    assert_eq!(before, (vec!["public".to_owned()], 0), "a fresh database");

    for args in read_only_commands(&topic) {
        for schema in [None, Some("no_such_schema")] {
            let out = run_with(&args, &db.url, schema).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {schema:?}: {stderr}");
            assert_eq!(
                stderr.trim_end(),
                format!(
                    "error: schema {} has no foodpipe tables; run `foodpipe consume` or \
                     `foodpipe migrate` first",
                    schema.unwrap_or("public")
                ),
                "{args:?} {schema:?}"
            );
            assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        }
    }
    assert_eq!(user_objects(&db).await, before, "nothing was created");

    let mut migrate = foodpipe(&["migrate"]);
    migrate.env("DATABASE_URL", &db.url);
    let applied = run_ok(migrate).await;
    assert!(
        applied.contains("applied V1__initial to schema public"),
        "{applied}"
    );
    assert!(
        applied.contains("applied V6__dead_letter_headers"),
        "{applied}"
    );
    let mut again = foodpipe(&["migrate"]);
    again.env("DATABASE_URL", &db.url);
    let again = run_ok(again).await;
    assert!(
        again.contains("schema public is up to date") && !again.contains("applied V"),
        "a second migrate applies nothing: {again}"
    );

    for args in read_only_commands(&topic) {
        let out = run_with(&args, &db.url, None).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if args[..2] == ["dead-letters", "show"] {
            // Now the schema is there and the dead letter is not.
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains("no dead letter with id 1"), "{stderr}");
        } else {
            assert!(out.status.success(), "{args:?}: {stderr}");
        }
    }
    // The other schema is still unknown: migrate did only the one it was given.
    let out = run_with(
        &read_only_commands(&topic)[0],
        &db.url,
        Some("no_such_schema"),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let (schemas, _) = user_objects(&db).await;
    assert_eq!(schemas, ["public"]);
    db.drop_db().await;
}

/// A role that may only SELECT (USAGE on the schema, SELECT on its tables, refinery_schema_history included) runs status, asof, dead-letters list and show, group list, group describe and watch --once; the same role cannot migrate.
#[tokio::test]
async fn read_only_commands_work_with_a_select_only_role() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    produce_events(&topic, 60, 1302).await;
    send_lines(&topic, b"CUST-0001\t{not json\n").await;
    consume_until_caught_up(&topic, &db, &[]).await;
    let dead_letter: i64 = db
        .client()
        .await
        .query_one("SELECT id FROM dead_letters", &[])
        .await
        .expect("one dead letter")
        .get(0);
    let reader = db.read_only_role(&["public"]).await;
    let before = user_objects(&db).await;

    let mut outputs = Vec::new();
    for mut args in read_only_commands(&topic) {
        if args[..2] == ["dead-letters", "show"] {
            args[2] = dead_letter.to_string();
        }
        let out = run_with(&args, &reader.url, None).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?} as {}: {}",
            reader.name,
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(stdout);
    }
    let [status, asof, list, show, groups, describe, watch] = &outputs[..] else {
        unreachable!("seven commands")
    };
    assert!(
        status.contains(&format!("topic {topic} / group order-processors")),
        "{status}"
    );
    assert!(status.contains("dead letters: 1"), "{status}");
    assert!(asof.contains("orders as of"), "{asof}");
    assert!(list.contains("malformed_json"), "{list}");
    assert!(show.contains("value:       {not json"), "{show}");
    assert!(groups.contains("order-processors"), "{groups}");
    assert!(
        describe.contains(&topic) && describe.contains("LOG-END-OFFSET"),
        "{describe}"
    );
    assert!(
        watch.contains(&format!("topic {topic}")) && watch.contains("dead letters 1 "),
        "{watch}"
    );
    assert_eq!(user_objects(&db).await, before);

    // The role really is read-only: it may not migrate a schema of its own.
    let out = run_with(&["migrate".to_owned()], &reader.url, Some("mine")).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    db.drop_db().await;
    reader.drop_role().await;
}

/// `replay` folds into --to-schema and refuses, in one line with exit 2, a --to-schema that is the live schema (public by default, or --schema / FOODPIPE_SCHEMA).
#[tokio::test]
async fn replay_refuses_the_live_schema() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let cases: [(&[&str], Option<&str>); 3] = [
        (&["--to-schema", "public"], None),
        (&["--to-schema", "billing", "--schema", "billing"], None),
        (&["--to-schema", "billing"], Some("billing")),
    ];
    for (flags, env_schema) in cases {
        let mut args = vec!["replay", "--topic", topic.as_str()];
        args.extend_from_slice(flags);
        let mut cmd = foodpipe(&args);
        cmd.env("DATABASE_URL", &db.url);
        if let Some(schema) = env_schema {
            cmd.env("FOODPIPE_SCHEMA", schema);
        }
        let out = run_within(cmd, Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flags:?} {env_schema:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("is the live schema"), "{stderr}");
    }
    assert_eq!(user_objects(&db).await, (vec!["public".to_owned()], 0));
    db.drop_db().await;
}

/// A record whose key and value hold `ESC [2J`, an OSC title sequence, BEL, NUL, a C1 CSI and a byte that is not UTF-8 prints escaped in `tail` (text and JSON) and `dead-letters show`: no control byte reaches the terminal.
#[tokio::test]
async fn record_bytes_are_escaped_for_the_terminal() {
    let topic = random_topic_name();
    let db = TestDb::create().await;
    let value: &[u8] = b"{\"x\":\"\x1b[2J\x1b]0;pwned\x07\x00 \xc2\x9b31m \xff\"}";
    let mut line = b"CUST-\x1b[31mRED\t".to_vec();
    line.extend_from_slice(value);
    line.push(b'\n');
    send_lines(&topic, &line).await;

    // Control bytes a terminal would act on; ESC-free text is all that may reach it.
    let raw_controls = |out: &[u8]| -> Vec<u8> {
        let text = String::from_utf8_lossy(out);
        text.chars()
            .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
            .map(|c| c as u8)
            .collect()
    };
    let escaped_value = "{\"x\":\"\\x1b[2J\\x1b]0;pwned\\x07\\x00 \\u{009b}31m \\xff\"}";

    let out = run_within(tail_from_beginning(&topic, &[]), Duration::from_secs(60)).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<u8>::new(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("escaped output is UTF-8");
    assert!(text.contains("\tCUST-\\x1b[31mRED\t"), "{text}");
    assert!(text.contains(escaped_value), "{text}");

    let json_lines = tail_from_beginning(&topic, &["--format", "json"]);
    let out = run_within(json_lines, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<u8>::new(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(
        json["key"], "CUST-\u{1b}[31mRED",
        "serde escapes, values stay exact"
    );

    consume_until_caught_up(&topic, &db, &[]).await;
    let id: i64 = db
        .client()
        .await
        .query_one("SELECT id FROM dead_letters", &[])
        .await
        .expect("the record is a dead letter (control characters in a JSON string)")
        .get(0);
    let mut show = foodpipe(&["dead-letters", "show", &id.to_string()]);
    show.env("DATABASE_URL", &db.url);
    let out = run_within(show, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<u8>::new(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("escaped output is UTF-8");
    assert!(text.contains("key:         CUST-\\x1b[31mRED"), "{text}");
    assert!(
        text.contains(&format!("value:       {escaped_value}")),
        "{text}"
    );

    let mut list = foodpipe(&["dead-letters", "list", "--topic", &topic]);
    list.env("DATABASE_URL", &db.url);
    let out = run_within(list, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(raw_controls(&out.stdout), Vec::<u8>::new(), "{out:?}");
    db.drop_db().await;
}
