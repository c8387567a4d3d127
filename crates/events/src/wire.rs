//! The JSON wire format of order events, and its decoding with reasons.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The schema version this build writes and understands. A record with any
/// other version is a dead letter rather than a guess.
pub const SCHEMA_VERSION: u32 = 1;

/// One order lifecycle event, as produced to Kafka.
///
/// ```json
/// {"event_id":"…","schema_version":1,"event_type":"OrderPaid",
///  "order_id":"…","customer_id":"CUST-0042","occurred_at":"2026-11-24T12:00:00Z",
///  "payload":{"payment_id":"…","amount_cents":2350,"method":"card"}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderEvent {
    /// Unique per event; a producer retry that writes the record twice
    /// carries the same id, which is how the sink recognises the duplicate.
    pub event_id: Uuid,
    pub schema_version: u32,
    pub order_id: Uuid,
    /// The Kafka key: all events of a customer, and so of each of their
    /// orders, land in one partition and stay in order.
    pub customer_id: String,
    /// When the event happened, in UTC; monotonic within an order.
    pub occurred_at: DateTime<Utc>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened, with the data of that kind of event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum EventBody {
    OrderCreated(OrderCreated),
    OrderPaid(OrderPaid),
    OrderShipped(OrderShipped),
    OrderDelivered(OrderDelivered),
    OrderCancelled(OrderCancelled),
}

impl EventBody {
    /// The `event_type` string on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            EventBody::OrderCreated(_) => "OrderCreated",
            EventBody::OrderPaid(_) => "OrderPaid",
            EventBody::OrderShipped(_) => "OrderShipped",
            EventBody::OrderDelivered(_) => "OrderDelivered",
            EventBody::OrderCancelled(_) => "OrderCancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCreated {
    pub restaurant_id: String,
    pub items: Vec<LineItem>,
    /// Sum of `quantity * unit_price_cents` over the items; money is kept in
    /// integer cents so no float ever rounds a price.
    pub total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    pub name: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPaid {
    pub payment_id: Uuid,
    pub amount_cents: i64,
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderShipped {
    pub courier: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderDelivered {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub reason: String,
    pub cancelled_by: CancelledBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Customer,
    Restaurant,
}

/// Why a record could not be decoded; stored with its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The value is present but zero bytes long.
    EmptyValue,
    /// The value is null: a tombstone, which on a compacted topic deletes
    /// its key. An event log has nothing to delete, so it is a dead letter
    /// of its own kind, told apart from a zero-length value.
    Tombstone,
    /// The record batch holding it cannot be decoded, so there is no
    /// record to look at: the batch's raw bytes are kept instead
    /// (`consume --on-corrupt-batch skip`).
    CorruptBatch,
    /// The value is not UTF-8, so it cannot be JSON.
    NotUtf8,
    /// The value is not well-formed JSON, or not a JSON object.
    MalformedJson,
    /// `schema_version` is one this build does not understand.
    UnknownSchemaVersion,
    /// `event_type` names no known event.
    UnknownEventType,
    /// A required field is missing or has the wrong type.
    InvalidField,
    /// The value is larger than the consumer's `--max-record-bytes`.
    Oversize,
}

impl ErrorKind {
    /// The stable name stored in `dead_letters.error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::EmptyValue => "empty_value",
            ErrorKind::Tombstone => "tombstone",
            ErrorKind::CorruptBatch => "corrupt_batch",
            ErrorKind::NotUtf8 => "not_utf8",
            ErrorKind::MalformedJson => "malformed_json",
            ErrorKind::UnknownSchemaVersion => "unknown_schema_version",
            ErrorKind::UnknownEventType => "unknown_event_type",
            ErrorKind::InvalidField => "invalid_field",
            ErrorKind::Oversize => "oversize",
        }
    }
}

/// A record that is not a valid order event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DecodeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The envelope: common fields, with the payload left raw until the
/// version and type say how to read it.
#[derive(Deserialize)]
struct Envelope<'a> {
    schema_version: Option<u32>,
    event_type: Option<&'a str>,
    event_id: Uuid,
    order_id: Uuid,
    customer_id: String,
    occurred_at: DateTime<Utc>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// Only the two fields that decide how to read the rest, for classifying
/// a value that is not a valid envelope.
#[derive(Deserialize)]
struct Header<'a> {
    schema_version: Option<serde_json::Value>,
    #[serde(borrow)]
    event_type: Option<&'a str>,
}

const KNOWN_TYPES: [&str; 5] = [
    "OrderCreated",
    "OrderPaid",
    "OrderShipped",
    "OrderDelivered",
    "OrderCancelled",
];

/// Decodes one record value into an event, or says exactly why not.
pub fn decode(value: Option<&[u8]>) -> Result<OrderEvent, DecodeError> {
    let bytes = value.ok_or_else(|| {
        DecodeError::new(
            ErrorKind::Tombstone,
            "record value is null (a tombstone), not an event",
        )
    })?;
    if bytes.is_empty() {
        return Err(DecodeError::new(
            ErrorKind::EmptyValue,
            "record value is empty (zero bytes), not an event",
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| DecodeError::new(ErrorKind::NotUtf8, format!("value is not UTF-8: {e}")))?;

    let invalid = |e: serde_json::Error| DecodeError::new(ErrorKind::InvalidField, e.to_string());
    // One parse for a good record; only a record that fails it is read a
    // second time, to say precisely what is wrong with it.
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => return Err(classify(text, e)),
    };
    check_header(
        env.schema_version.map(serde_json::Value::from).as_ref(),
        env.event_type,
    )?;
    let event_type = env.event_type.unwrap_or_default();
    let payload = env.payload.map(RawValue::get).unwrap_or("{}");
    let body = match event_type {
        "OrderCreated" => EventBody::OrderCreated(serde_json::from_str(payload).map_err(invalid)?),
        "OrderPaid" => EventBody::OrderPaid(serde_json::from_str(payload).map_err(invalid)?),
        "OrderShipped" => EventBody::OrderShipped(serde_json::from_str(payload).map_err(invalid)?),
        "OrderDelivered" => {
            EventBody::OrderDelivered(serde_json::from_str(payload).map_err(invalid)?)
        }
        _ => EventBody::OrderCancelled(serde_json::from_str(payload).map_err(invalid)?),
    };
    Ok(OrderEvent {
        event_id: env.event_id,
        schema_version: env.schema_version.unwrap_or(SCHEMA_VERSION),
        order_id: env.order_id,
        customer_id: env.customer_id,
        occurred_at: env.occurred_at,
        body,
    })
}

/// Why a value that did not parse as an event is not one: not JSON at all,
/// a version or type this build does not know, or else a bad field.
fn classify(text: &str, envelope_error: serde_json::Error) -> DecodeError {
    let header: Header<'_> = match serde_json::from_str(text) {
        Ok(h) => h,
        Err(e) if e.is_data() => {
            return DecodeError::new(
                ErrorKind::MalformedJson,
                format!("value is not a JSON object: {e}"),
            );
        }
        Err(e) => {
            return DecodeError::new(ErrorKind::MalformedJson, format!("malformed JSON: {e}"));
        }
    };
    match check_header(header.schema_version.as_ref(), header.event_type) {
        Err(e) => e,
        Ok(()) => DecodeError::new(ErrorKind::InvalidField, envelope_error.to_string()),
    }
}

/// The two fields that decide how to read the rest must be known.
fn check_header(
    schema_version: Option<&serde_json::Value>,
    event_type: Option<&str>,
) -> Result<(), DecodeError> {
    match schema_version {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
        Some(other) => {
            return Err(DecodeError::new(
                ErrorKind::UnknownSchemaVersion,
                format!("unknown schema_version {other}, this build reads {SCHEMA_VERSION}"),
            ));
        }
        None => {
            return Err(DecodeError::new(
                ErrorKind::InvalidField,
                "missing field `schema_version`",
            ));
        }
    }
    match event_type {
        Some(t) if KNOWN_TYPES.contains(&t) => Ok(()),
        Some(t) => Err(DecodeError::new(
            ErrorKind::UnknownEventType,
            format!("unknown event_type {t:?}"),
        )),
        None => Err(DecodeError::new(
            ErrorKind::InvalidField,
            "missing field `event_type`",
        )),
    }
}

impl OrderEvent {
    /// The JSON bytes produced to Kafka.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail: no maps with
        // non-string keys, no custom serialisers that error.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Generator, GeneratorConfig};

    /// Every generated event survives a round trip through its JSON form.
    #[test]
    fn generated_events_round_trip() {
        let generator = Generator::new(GeneratorConfig {
            seed: 7,
            ..GeneratorConfig::default()
        });
        for event in generator.take(500) {
            let decoded = decode(Some(&event.to_json())).expect("decodes");
            assert_eq!(decoded, event);
        }
    }

    fn kind_of(value: &[u8]) -> ErrorKind {
        decode(Some(value)).expect_err("must not decode").kind
    }

    const GOOD: &str = r#"{"event_id":"5f0c6b0e-7a43-4d5e-9d0e-0a6f3c1b2d4e","schema_version":1,"event_type":"OrderPaid","order_id":"0b4f6a8e-2c1d-4e3f-8a9b-1c2d3e4f5a6b","customer_id":"CUST-0001","occurred_at":"2026-11-24T12:00:00Z","payload":{"payment_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","amount_cents":1250,"method":"card"}}"#;

    /// A hand-written valid event decodes.
    #[test]
    fn good_record_decodes() {
        let event = decode(Some(GOOD.as_bytes())).expect("decodes");
        assert_eq!(event.body.event_type(), "OrderPaid");
        assert_eq!(event.customer_id, "CUST-0001");
    }

    /// A null value (tombstone) and a zero-length value are two kinds, with stable names.
    #[test]
    fn tombstone_and_empty_value_are_distinct() {
        let tombstone = decode(None).expect_err("null value");
        let empty = decode(Some(b"")).expect_err("zero bytes");
        assert_eq!(tombstone.kind.as_str(), "tombstone");
        assert_eq!(empty.kind.as_str(), "empty_value");
        assert_ne!(tombstone.kind, empty.kind);
        // Whitespace is not empty: it is (malformed) JSON text.
        assert_eq!(kind_of(b" "), ErrorKind::MalformedJson);
    }

    /// Each kind of bad record is classified by what is wrong with it.
    #[test]
    fn bad_records_are_classified() {
        assert_eq!(
            decode(None).expect_err("tombstone").kind,
            ErrorKind::Tombstone
        );
        assert_eq!(kind_of(b""), ErrorKind::EmptyValue);
        assert_eq!(kind_of(&[0xff, 0xfe, b'{']), ErrorKind::NotUtf8);
        assert_eq!(kind_of(b"{not json"), ErrorKind::MalformedJson);
        assert_eq!(kind_of(b"[1,2,3]"), ErrorKind::MalformedJson);
        assert_eq!(
            kind_of(
                GOOD.replace("\"schema_version\":1", "\"schema_version\":2")
                    .as_bytes()
            ),
            ErrorKind::UnknownSchemaVersion
        );
        assert_eq!(
            kind_of(GOOD.replace("OrderPaid", "OrderTeleported").as_bytes()),
            ErrorKind::UnknownEventType
        );
        assert_eq!(
            kind_of(
                GOOD.replace("\"customer_id\":\"CUST-0001\",", "")
                    .as_bytes()
            ),
            ErrorKind::InvalidField
        );
        assert_eq!(
            kind_of(
                GOOD.replace("\"amount_cents\":1250", "\"amount_cents\":\"lots\"")
                    .as_bytes()
            ),
            ErrorKind::InvalidField
        );
    }
}
