//! Topic configurations, like `kafka-topics --create --config` and
//! `kafka-configs --describe`: `cleanup.policy` (delete, compact),
//! `retention.ms` and the rest, set when a topic is created and read back.
//!
//! rskafka's CreateTopics sends no configs and it has no DescribeConfigs;
//! the `kafka-protocol` crate encodes both and the patched rskafka's
//! `raw_broker` sends them (see `broker_groups`).
//!
//! # References
//!
//! - Kafka protocol guide: CreateTopics (key 19), DescribeConfigs (key 32).
//! - Kafka's topic configs: <https://kafka.apache.org/documentation/#topicconfigs>.

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rskafka::client::Client;
use rskafka::client::error::ProtocolError;

use crate::broker_groups::{call, code_name, group_error};
use crate::{Error, Result};

/// DescribeConfigs' resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// DescribeConfigs' `config_source` of a broker default.
const DEFAULT_CONFIG: i8 = 5;
/// How long the controller may take to create a topic.
const TIMEOUT_MS: i32 = 5_000;

/// A topic's config entry: `name=value`.
pub type Config = (String, String);

/// Parses `name=value`.
pub fn parse_config(s: &str) -> std::result::Result<Config, String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not name=value, e.g. cleanup.policy=compact or retention.ms=604800000"
        )),
    }
}

fn subject(topic: &str) -> String {
    format!("=topic {topic:?}")
}

/// Creates `topic` with `configs` through CreateTopics. A broker that
/// refuses a config says which in the error.
pub async fn create_with_configs(
    client: &Client,
    topic: &str,
    partitions: u32,
    replication_factor: i16,
    configs: &[Config],
) -> Result<()> {
    let broker = client
        .raw_broker(None)
        .await
        .map_err(|source| Error::Metadata { source })?;
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(TIMEOUT_MS)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_num_partitions(partitions as i32)
                .with_replication_factor(replication_factor)
                .with_configs(
                    configs
                        .iter()
                        .map(|(name, value)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(name.clone()))
                                .with_value(Some(StrBytes::from_string(value.clone())))
                        })
                        .collect(),
                ),
        ]);
    let response: CreateTopicsResponse =
        call(&broker, "CreateTopics", &subject(topic), 2..=7, &request).await?;
    for t in response.topics {
        if t.error_code != 0 {
            let message = t
                .error_message
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Err(group_error(
                "CreateTopics",
                &subject(topic),
                format!("{}{message}", code_name(t.error_code)),
                ProtocolError::new(t.error_code),
            ));
        }
    }
    Ok(())
}

/// `topic`'s configs as the broker describes them, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfigs {
    /// Set on the topic (not a broker default).
    pub set: Vec<Config>,
    /// The rest: the broker's defaults. Tansu 0.6.0 marks every config it
    /// stores for a topic as a default, so there they all land here.
    pub defaults: Vec<Config>,
}

/// `topic`'s configs (DescribeConfigs).
pub async fn describe_configs(client: &Client, topic: &str) -> Result<TopicConfigs> {
    let broker = client
        .raw_broker(None)
        .await
        .map_err(|source| Error::Metadata { source })?;
    let request = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(TOPIC_RESOURCE)
            .with_resource_name(StrBytes::from_string(topic.to_owned()))
            .with_configuration_keys(None),
    ]);
    let response: DescribeConfigsResponse =
        call(&broker, "DescribeConfigs", &subject(topic), 0..=4, &request).await?;
    let mut configs = TopicConfigs {
        set: Vec::new(),
        defaults: Vec::new(),
    };
    for result in response.results {
        if result.error_code != 0 {
            return Err(group_error(
                "DescribeConfigs",
                &subject(topic),
                code_name(result.error_code),
                ProtocolError::new(result.error_code),
            ));
        }
        for c in result.configs {
            let value = if c.is_sensitive {
                "(sensitive)".to_owned()
            } else {
                c.value.map(|v| v.to_string()).unwrap_or_default()
            };
            let entry = (c.name.to_string(), value);
            if c.config_source == DEFAULT_CONFIG {
                configs.defaults.push(entry);
            } else {
                configs.set.push(entry);
            }
        }
    }
    configs.set.sort();
    configs.defaults.sort();
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name=value` parses, trimmed; anything else is one line saying what to write.
    #[test]
    fn configs_parse() {
        assert_eq!(
            parse_config("cleanup.policy=compact"),
            Ok(("cleanup.policy".to_owned(), "compact".to_owned()))
        );
        assert_eq!(
            parse_config(" retention.ms = 1000 "),
            Ok(("retention.ms".to_owned(), "1000".to_owned()))
        );
        let e = parse_config("compact").expect_err("no =");
        assert!(e.contains("name=value"), "{e}");
        assert!(parse_config("=x").is_err());
    }
}
