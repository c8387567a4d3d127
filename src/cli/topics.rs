//! `topics`, `tail`, `cluster` and `doctor`: the Kafka tools.

use clap::{Args, Subcommand, ValueEnum};

use super::BadInput;
use super::args::{ClusterArgs, DbArgs, KafkaArgs, parse_datetime, parse_partitions};
use super::shutdown_signal;

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Every topic and its partition count.
    List(ClusterArgs),
    /// Partitions of a topic with their earliest and latest offsets.
    Describe(TopicArgs),
    /// Create a topic.
    Create(TopicCreateArgs),
    /// Delete a topic. (Tansu 0.6.0 deletes every topic of the cluster
    /// instead; see docs/reference.md.)
    Delete(TopicArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TopicArgs {
    #[command(flatten)]
    kafka: ClusterArgs,
    /// The topic.
    name: String,
}

#[derive(Debug, Args)]
pub(crate) struct TopicCreateArgs {
    #[command(flatten)]
    kafka: ClusterArgs,
    /// The topic.
    name: String,
    /// How many partitions.
    #[arg(long, default_value_t = 3, value_parser = parse_partitions, allow_negative_numbers = true)]
    partitions: u32,
    /// On how many brokers each partition is kept (one leader, the rest
    /// followers); at most the cluster's broker count.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i16).range(1..))]
    replication_factor: i16,
    /// A topic config, NAME=VALUE, e.g. cleanup.policy=compact or
    /// retention.ms=604800000 (repeat for several).
    #[arg(long = "config", value_name = "NAME=VALUE", value_parser = kafka::topic_configs::parse_config)]
    configs: Vec<kafka::topic_configs::Config>,
    /// Succeed without changing anything when the topic already exists
    /// (as kafka-topics.sh --if-not-exists), e.g. for an init container.
    #[arg(long)]
    if_not_exists: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Start at the earliest record still on the broker.
    #[arg(long, conflicts_with_all = ["offset", "from_datetime"])]
    from_beginning: bool,
    /// Start at this offset (with --partition, or in every partition).
    #[arg(long, conflicts_with = "from_datetime")]
    offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_datetime)]
    from_datetime: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Keep waiting for new records until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    format: FormatArg,
}

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
}

/// Runs a `topics` subcommand.
pub(crate) async fn topics(cmd: TopicsCommand) -> anyhow::Result<()> {
    match cmd {
        TopicsCommand::List(args) => {
            let client = kafka::connect(&args.config()?).await?;
            for topic in kafka::topics::list(&client).await? {
                println!("{topic}");
            }
        }
        TopicsCommand::Describe(args) => {
            let client = kafka::connect(&args.kafka.config()?).await?;
            print!("{}", kafka::topics::describe(&client, &args.name).await?);
            // Its configs (cleanup.policy, retention.ms, ...), as set on
            // the topic; a broker without DescribeConfigs says so.
            match kafka::topic_configs::describe_configs(&client, &args.name).await {
                Ok(configs) => {
                    let (heading, entries) = if configs.set.is_empty() {
                        (
                            "configs (the broker calls these defaults):",
                            configs.defaults,
                        )
                    } else {
                        ("configs set on the topic:", configs.set)
                    };
                    if entries.is_empty() {
                        println!("configs: none reported");
                    } else {
                        println!("{heading}");
                        for (name, value) in entries {
                            println!("  {name}={value}");
                        }
                    }
                }
                Err(e) => println!("configs: not shown ({e})"),
            }
        }
        TopicsCommand::Create(args) => {
            let client = kafka::connect(&args.kafka.config()?).await?;
            match kafka::topics::create(
                &client,
                &args.name,
                args.partitions,
                args.replication_factor,
                &args.configs,
            )
            .await
            {
                Ok(info) => println!(
                    "created topic {} with {} partition(s)",
                    args.name, info.partitions
                ),
                Err(kafka::Error::TopicExists { partitions, .. }) if args.if_not_exists => {
                    println!(
                        "topic {} already exists with {partitions} partition(s)",
                        args.name
                    );
                }
                Err(kafka::Error::TopicExists { .. }) => {
                    return Err(BadInput(format!(
                        "topic {:?} already exists (add --if-not-exists to accept that)",
                        args.name
                    ))
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        TopicsCommand::Delete(args) => {
            let client = kafka::connect(&args.kafka.config()?).await?;
            kafka::topics::delete(&client, &args.name).await?;
            println!("deleted topic {}", args.name);
        }
    }
    Ok(())
}

/// `tail`: records printed as they are read.
pub(crate) async fn tail(args: TailArgs) -> anyhow::Result<()> {
    use ops::tail::{Format, From, TailConfig};
    let from = if args.from_beginning {
        From::Beginning
    } else if let Some(o) = args.offset {
        From::Offset(o)
    } else if let Some(t) = args.from_datetime {
        From::Time(t)
    } else {
        From::Latest
    };
    let config = TailConfig {
        kafka: args.kafka.config()?,
        topic: args.kafka.topic.clone(),
        from,
        partition: args.partition,
        follow: args.follow,
        format: match args.format {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
        },
    };
    let mut out = super::Stdout::new();
    ops::tail::run(config, &mut out, shutdown_signal()).await?;
    Ok(())
}

/// `cluster`: what each bootstrap entry answered, and the brokers as the
/// first answer advertises them.
pub(crate) async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let answers = ops::doctor::cluster(&args.config()?).await;
    for a in &answers {
        println!("{a}");
    }
    let Some(view) = answers.iter().find_map(|a| a.answer.as_ref().ok()) else {
        anyhow::bail!(
            "no bootstrap server answered: check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS"
        );
    };
    print!("{view}");
    Ok(())
}

/// `doctor`: every check, one line each, with the fix.
pub(crate) async fn doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let checks =
        ops::doctor::doctor(&args.kafka.config()?, &args.db.config()?, &args.kafka.topic).await;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} check(s) failed; see the FAIL lines above"
    );
    println!("all {} checks passed", checks.len());
    Ok(())
}
